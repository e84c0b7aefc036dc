#!/usr/bin/env bash
# Provision the lab VM (or any Debian/Ubuntu host with systemd), as root.
# It runs the same setup as the README's `./lab` command, then makes JupyterLab a
# service. Idempotent: a second run installs nothing, writes nothing, and says so.
#
#   1. scripts/setup.sh          Debian packages, the Python venv, labkit (one source of truth)
#   2. /etc/profile.d/labkit.sh  the venv's bin on PATH, LABKIT_VENV for ./lab and sudo;
#      /usr/local/bin/labkit     a link to the venv's labkit command
#   3. scripts/jupyter-service.sh JupyterLab as the systemd service labkit-jupyter, opened
#      on the handouts (/srv/labkit/handouts: the student versions, built when missing,
#      never overwritten); the solutions stay in the repository's notebooks/
#
# The venv lives outside the repository (LABKIT_VENV, default /opt/labkit/venv):
# the repository is a folder shared with the host, where symlinks may be refused
# (Windows hosts) and a venv's many small files are slow to import.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LABKIT_VENV=${LABKIT_VENV:-/opt/labkit/venv}
# JupyterLab listens on LABKIT_JUPYTER_IP, 127.0.0.1 unless told: on a cloud VM,
# reach it through `ssh -L`. The Vagrantfile sets 0.0.0.0, since Vagrant's port
# forward arrives on the VM's own address (and is bound to the host's 127.0.0.1).
changed=()

if [ "$(id -u)" -ne 0 ]; then
    echo "provision: needs root: run it with sudo" >&2
    exit 1
fi

"$repo/scripts/setup.sh"

# shellcheck source=scripts/put.sh
. "$repo/scripts/put.sh"

put 644 /etc/profile.d/labkit.sh <<EOF
# labkit: the lab's venv (made by $repo/vagrant/provision.sh)
export LABKIT_VENV=$LABKIT_VENV
case ":\$PATH:" in *":$LABKIT_VENV/bin:"*) ;; *) PATH="$LABKIT_VENV/bin:\$PATH" ;; esac
EOF
# sudo resets the environment: keep LABKIT_VENV so that `sudo ./lab test` uses this venv.
if [ -d /etc/sudoers.d ]; then
    put 440 /etc/sudoers.d/labkit <<EOF
Defaults env_keep += "LABKIT_VENV"
EOF
fi

# `sudo labkit ...` works too: sudo's PATH (secure_path) has /usr/local/bin.
if [ "$(readlink /usr/local/bin/labkit)" != "$LABKIT_VENV/bin/labkit" ]; then
    ln -sfn "$LABKIT_VENV/bin/labkit" /usr/local/bin/labkit
    changed+=(/usr/local/bin/labkit)
fi

"$repo/scripts/jupyter-service.sh"

# The lab VM is meant to have cgroup v2 (cgroups(7): one unified hierarchy,
# cgroup2 mounted at /sys/fs/cgroup); labkit also works on v1 or hybrid hosts.
if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then
    echo "provision: cgroup v2 (unified) at /sys/fs/cgroup"
else
    echo "provision: note: /sys/fs/cgroup is not cgroup v2 here; labkit uses its v1 driver"
fi

if [ ${#changed[@]} -gt 0 ]; then
    printf 'provision: changed %s\n' "${changed[@]}"
else
    echo "provision: nothing changed"
fi
