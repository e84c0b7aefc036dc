#!/usr/bin/env bash
# Install everything the lab needs on a Debian/Ubuntu host, as root. Idempotent:
# a second run installs nothing and changes nothing.
#   Debian packages: busybox-static (the containers' root filesystem), strace,
#   iproute2, util-linux (unshare, for comparison), runc and bubblewrap (benchmarks),
#   libseccomp2 and python3-seccomp (the seccomp filter: libseccomp's own Python module,
#   linked into the venv when built for its Python; pyseccomp from the lock otherwise).
#   A Python virtual environment in $LABKIT_VENV (default: .venv in the repository)
#   with the classroom's locked set (requirements.lock: every package pinned, with its
#   hashes, so every machine of a class gets the same files) and labkit itself (pip
#   install -e, no dependencies: the lock has them).
#   With --test (what `./lab test` and CI use), also the test suite's tools:
#   vagrant and its vagrant-libvirt plugin (`vagrant validate` of the Vagrantfile,
#   the libvirt block included), shellcheck, debootstrap (a fresh Debian root for
#   the provisioning test), linux-libc-dev (the kernel's syscall tables), git.
#   With --vm (what `./lab vm` uses), what builds and boots the lab VM: debootstrap,
#   qemu-system-x86 and qemu-utils, e2fsprogs (mkfs.ext4 -d), cpio and kmod (initramfs),
#   chromium (the browser test of the student's path, driven by Playwright).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LABKIT_VENV:-$repo/.venv}
packages=(busybox-static strace iproute2 util-linux runc bubblewrap libseccomp2 python3-seccomp python3-venv ca-certificates git)
case "${1:-}" in
"") ;;
--test) packages+=(shellcheck vagrant vagrant-libvirt debootstrap linux-libc-dev) ;;
--vm) packages+=(debootstrap qemu-system-x86 qemu-utils e2fsprogs cpio kmod chromium) ;;
*) echo "setup: unknown option $1: use scripts/setup.sh [--test|--vm]" >&2; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: needs root: run it with sudo, or inside the lab VM" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python=${LABKIT_PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: labkit needs Python 3.11 or newer; $("$python" --version 2>&1) found" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating the virtual environment $venv"
    "$python" -m venv "$venv"
fi
# pip is run only when the lock or pyproject.toml changed since the last run.
stamp="$venv/.labkit-installed"
want=$(cat "$repo/requirements.lock" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing the Python packages (requirements.lock, labkit)"
    # --require-hashes: a file whose sha256 is not in the lock is refused, whatever index served it.
    "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$repo/requirements.lock"
    # compat mode: a plain path in a .pth file, no import hook (keeps `labkit run` fast)
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$repo" --config-settings editable_mode=compat
    # matplotlib builds its font cache on first import and, when that takes over 5 s
    # (a loaded or emulated machine), says so on stderr in the student's first cell.
    "$venv/bin/python" -c 'import matplotlib.font_manager'
    echo "$want" > "$stamp"
fi
# libseccomp's own Python module (Debian's python3-seccomp; it is not on PyPI) goes into the
# venv as a link when it was built for the venv's Python: labkit/libseccomp.py prefers it to
# pyseccomp, which runs ldconfig to find libseccomp at every import (benchmarks/container_startup.py).
module=$(/usr/bin/python3 -c 'import seccomp; print(seccomp.__file__)' 2>/dev/null || true)
read -r site suffix < <("$venv/bin/python" -c \
    'import sysconfig; print(sysconfig.get_paths()["platlib"], sysconfig.get_config_var("EXT_SUFFIX"))')
if [ -n "$module" ] && [ "${module%"$suffix"}" != "$module" ] && [ "$(readlink "$site/${module##*/}")" != "$module" ]; then
    ln -sfn "$module" "$site/${module##*/}"
fi
echo "setup: ready ($venv)"
