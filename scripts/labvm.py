#!/usr/bin/env python3
"""The lab VM, built from Debian packages and booted under qemu: `./lab vm ...`.

    ./lab vm build [--release trixie|bookworm] [--force]
    ./lab vm test  [--release ...] [PYTEST-ARGS...]   ./lab test inside the VM, on this checkout
    ./lab vm run   [--release ...] [--port N] -- CMD  any command inside the VM, in /labkit
    ./lab vm box   [--release ...] [--arch amd64|arm64] [--out DIR] [--base-url URL]
                   Vagrant boxes (libvirt, VirtualBox), their catalog, a WSL tarball and
                   cloud-init user-data for a class: scripts/labbox.py says how

build: debootstrap a Debian root with its own kernel (linux-image-amd64) and
systemd as init, then run the repository's vagrant/provision.sh in it (the same
provisioning Vagrant does: setup.sh, the venv in /opt/labkit/venv, the
labkit-jupyter service) and setup.sh --test (what `./lab test` needs). The root
becomes an ext4 disk image (mkfs.ext4 -d, no loop device); a second disk is a
swap area, as the common Vagrant boxes have. Everything is kept in
/var/cache/labkit/vm/RELEASE (LABKIT_VM_CACHE moves it), outside the repository,
and rebuilt when the provisioning or this file changes.

test/run: boot that image with qemu-system-x86_64 (KVM where a guest can run,
TCG otherwise), the disks in snapshot mode (every boot starts from the built
image), this checkout shared read-write over virtio-9p at /labkit, and qemu's
user networking (the guest's only way out: the package registries). A systemd
unit in the image, enabled only when the kernel command line says
labkit.job=1, runs the job the host wrote into a second 9p share from a login
shell, writes its output to the second serial port (which this command prints
as it comes), its exit status to the share, and powers off. The command exits
with the job's status: for `vm test`, pytest's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("LABKIT_VM_CACHE", "/var/cache/labkit/vm")
MIRROR = os.environ.get("LABKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
RELEASES = {"trixie": "Debian 13", "bookworm": "Debian 12"}
DEFAULT_RELEASE = "trixie"
# What a Debian Vagrant box has beyond minbase: the kernel and its initramfs, systemd as
# init with udev and dbus, sudo, and ifupdown-free networking through systemd-networkd.
INCLUDE = ("linux-image-amd64,initramfs-tools,systemd,systemd-sysv,udev,dbus,kmod,"
           "e2fsprogs,sudo,ca-certificates,iproute2,procps,less")
# The files whose content decides what the image holds: a change to any rebuilds it,
# as does a change to the guest's files below or to BUILD_STEPS (bump it when
# Image.build does something new).
INPUTS = ("vagrant/provision.sh", "scripts/setup.sh", "scripts/jupyter-service.sh",
          "scripts/put.sh", "requirements.lock", "pyproject.toml")
BUILD_STEPS = 2
DISK_SIZE = "12G"
SWAP_SIZE = "1G"
HOST_CA_DIR = "/usr/local/share/ca-certificates"

# The guest's side: the unit and the script it runs (written into the image at build).
JOB_UNIT = """\
[Unit]
Description=labkit: the job ./lab vm passed to this boot (only with labkit.job=1)
ConditionKernelCommandLine=labkit.job=1
After=local-fs.target remote-fs.target network-online.target labkit-jupyter.service
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/labkit-vm-job
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""
JOB_SCRIPT = """\
#!/bin/bash
# Run the job ./lab vm wrote into the labkit-run share; output to ttyS1, status to the share.
set -u
share=/run/labkit-vm
mkdir -p "$share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 labkit-run "$share"
stty -F /dev/ttyS1 raw -echo 2>/dev/null
# Through a pipe, as in a CI log: the job's stdout is not a terminal (no colours).
# The network may inspect TLS: trust, for this boot, what the host trusts beyond Debian.
if [ -d "$share/ca" ]; then
    cp "$share"/ca/*.crt /usr/local/share/ca-certificates/ 2>/dev/null && update-ca-certificates >/dev/null 2>&1
fi
bash -l "$share/job" < /dev/null 2>&1 | cat > /dev/ttyS1
echo "${PIPESTATUS[0]}" > "$share/status.new" && mv "$share/status.new" "$share/status"
sync
systemctl poweroff --no-block
"""
FSTAB = """\
/dev/vda / ext4 errors=remount-ro 0 1
LABEL=labkit-swap none swap sw,nofail 0 0
# The repository, shared by ./lab vm (qemu -virtfs) as Vagrant shares it at /labkit.
labkit /labkit 9p trans=virtio,version=9p2000.L,msize=262144,cache=loose,nofail 0 0
"""
NETWORK = """\
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""


def log(msg: str) -> None:
    print(f"vm: {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> None:
    print(f"vm: {msg}", file=sys.stderr)
    sys.exit(125)


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


def inputs_digest(release: str) -> str:
    guest = (INCLUDE, MIRROR, JOB_UNIT, JOB_SCRIPT, FSTAB, NETWORK, DISK_SIZE, SWAP_SIZE, BUILD_STEPS)
    h = hashlib.sha256(repr((release,) + guest).encode())
    for rel in INPUTS:
        with open(os.path.join(REPO, rel), "rb") as f:
            h.update(rel.encode() + b"\0" + f.read())
    return h.hexdigest()


class Image:
    """The built files of one release: disk, swap, kernel, initrd, and the digest they came from."""

    def __init__(self, release: str) -> None:
        self.release = release
        self.dir = os.path.join(CACHE, release)
        self.disk, self.swap = f"{self.dir}/root.img", f"{self.dir}/swap.img"
        self.kernel, self.initrd = f"{self.dir}/vmlinuz", f"{self.dir}/initrd.img"
        self.stamp = f"{self.dir}/stamp"

    def current(self) -> bool:
        try:
            with open(self.stamp) as f:
                return f.read().strip() == inputs_digest(self.release)
        except FileNotFoundError:
            return False

    def build(self) -> None:
        started = time.monotonic()
        os.makedirs(self.dir, exist_ok=True)
        base = self.base_root()
        work = tempfile.mkdtemp(prefix="build-", dir=self.dir)
        try:
            root = f"{work}/root"
            log(f"copying the fresh {self.release} root")
            sh("cp", "-a", "--reflink=auto", base, root)
            self.configure(root)
            self.provision(root)
            self.make_disks(work, root)
            with open(f"{work}/stamp", "w") as f:
                f.write(inputs_digest(self.release) + "\n")
            for name in ("root.img", "swap.img", "vmlinuz", "initrd.img", "stamp"):
                os.replace(f"{work}/{name}", f"{self.dir}/{name}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"built {self.disk} in {time.monotonic() - started:.0f} s")

    def base_root(self) -> str:
        """A debootstrap of the release, made once (the slow, download-bound step)."""
        key = hashlib.sha256(f"{self.release}\n{INCLUDE}\n{MIRROR}".encode()).hexdigest()[:12]
        base = f"{self.dir}/base-{key}"
        if os.path.isdir(base):
            return base
        for old in os.listdir(self.dir):
            if old.startswith(("base-", "build-")):
                shutil.rmtree(f"{self.dir}/{old}", ignore_errors=True)
        tmp = f"{base}.tmp"
        log(f"debootstrap {self.release} ({RELEASES[self.release]}) from {MIRROR}")
        started = time.monotonic()
        # In a private mount namespace: debootstrap's /proc and /sys mounts cannot
        # outlive it, whatever happens (mount_namespaces(7)).
        sh("unshare", "--mount", "--propagation", "private", "--",
           "debootstrap", "--variant=minbase", f"--include={INCLUDE}", self.release, tmp, MIRROR,
           stdout=subprocess.DEVNULL)
        os.rename(tmp, base)
        log(f"debootstrap took {time.monotonic() - started:.0f} s")
        return base

    def configure(self, root: str) -> None:
        """What a box's installer sets: hostname, fstab, network, console, the job unit."""
        files = {
            "etc/hostname": "labkit\n",
            "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 labkit\n",
            "etc/fstab": FSTAB,
            "etc/systemd/network/80-labkit-dhcp.network": NETWORK,
            "etc/modules-load.d/labkit-9p.conf": "9p\n9pnet_virtio\n",
            "etc/systemd/system/labkit-vm-job.service": JOB_UNIT,
            "usr/local/sbin/labkit-vm-job": JOB_SCRIPT,
        }
        for rel, text in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        os.chmod(f"{root}/usr/local/sbin/labkit-vm-job", 0o755)
        os.makedirs(f"{root}/labkit", exist_ok=True)
        # root may log in on the serial console without a password (a throwaway test VM).
        self.chroot(root, "passwd -d root >/dev/null; "
                    "systemctl enable --quiet systemd-networkd labkit-vm-job.service; "
                    "ln -sf /proc/self/mounts /etc/mtab")

    def chroot(self, root: str, script: str, env: dict[str, str] | None = None) -> None:
        """Run a shell script chrooted into root, with /proc, /sys, /dev and this checkout
        at /labkit mounted in a private mount namespace (gone with it, on every path)."""
        mounts = (f"mount -t proc proc {root}/proc && mount -t sysfs sysfs {root}/sys && "
                  f"mount --rbind /dev {root}/dev && mount --bind {shlex.quote(REPO)} {root}/labkit && "
                  f"mount -t tmpfs tmpfs {root}/tmp")
        inner = f"{mounts} && exec chroot {root} /bin/bash -euc {shlex.quote(script)}"
        full_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        full_env.update(env or {})
        sh("unshare", "--mount", "--propagation", "private", "--", "/bin/bash", "-ec", inner, env=full_env)

    def provision(self, root: str, test_tools: bool = True, then: str = "") -> None:
        """vagrant/provision.sh as the Vagrantfile runs it, then setup.sh --test (test_tools),
        then the script `then` (a box's additions: scripts/labbox.py), while the network is there."""
        log("provisioning: vagrant/provision.sh" + (", then scripts/setup.sh --test" if test_tools else ""))
        # The build reaches the registries as this host does: its DNS and the extra
        # certificate authorities it trusts (a network may inspect TLS). Both are
        # taken out again, so the image trusts only Debian's set.
        shutil.copy2("/etc/resolv.conf", f"{root}/etc/resolv.conf")
        extra = sorted(f for f in os.listdir(HOST_CA_DIR) if f.endswith(".crt")) if os.path.isdir(HOST_CA_DIR) else []
        for crt in extra:
            shutil.copy2(f"{HOST_CA_DIR}/{crt}", f"{root}{HOST_CA_DIR}/labkit-build-{crt}")
        self.chroot(root, "update-ca-certificates >/dev/null; "
                    "bash /labkit/vagrant/provision.sh; "
                    + ("LABKIT_VENV=/opt/labkit/venv bash /labkit/scripts/setup.sh --test; " if test_tools else "")
                    + then +
                    "rm -f /usr/local/share/ca-certificates/labkit-build-*; "
                    "update-ca-certificates --fresh >/dev/null; apt-get clean; rm -rf /root/.cache/pip",
                    env={"LABKIT_JUPYTER_IP": "0.0.0.0", "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt"})
        if not os.path.islink(f"{root}/etc/resolv.conf"):     # a box's systemd-resolved keeps its stub
            with open(f"{root}/etc/resolv.conf", "w") as f:
                f.write("nameserver 10.0.2.3\n")      # qemu's user-network DNS

    def make_disks(self, work: str, root: str) -> None:
        """The root as an ext4 image (mkfs.ext4 -d copies a tree, no loop device), a swap disk,
        and the kernel and initramfs that boot it."""
        boot = f"{root}/boot"
        kernels = sorted(f for f in os.listdir(boot) if f.startswith("vmlinuz-"))
        if not kernels:
            fail(f"no kernel in {boot}: did linux-image-amd64 install?")
        version = kernels[-1][len("vmlinuz-"):]
        shutil.copy2(f"{boot}/vmlinuz-{version}", f"{work}/vmlinuz")
        shutil.copy2(f"{boot}/initrd.img-{version}", f"{work}/initrd.img")
        log(f"making the disks (kernel {version})")
        sh("truncate", "-s", DISK_SIZE, f"{work}/root.img")
        sh("mkfs.ext4", "-q", "-F", "-L", "labkit-root", "-d", root, f"{work}/root.img")
        sh("truncate", "-s", SWAP_SIZE, f"{work}/swap.img")
        sh("mkswap", "-L", "labkit-swap", f"{work}/swap.img", stdout=subprocess.DEVNULL)


def accel() -> str:
    """qemu's -accel value: KVM where it can run a guest, else TCG. LABKIT_VM_ACCEL=kvm
    asks for KVM; the default is TCG, because on this project's machines /dev/kvm
    exists but a KVM guest never gets past the firmware.

    TCG runs both virtual CPUs in one host thread (thread=single). With one thread
    per CPU (multi-threaded TCG, qemu's default) the guest kernel died here with
    "Oops: int3" in syscall_exit_to_user_mode_prepare while a trace switched the
    raw_syscalls tracepoints: the kernel patches its own code through an int3
    (arch/x86/kernel/alternative.c, text_poke_bp) and, once done, another CPU still
    ran the old translated code (seen once in about 20 minutes of tracing; that
    it is TCG's doing and not the kernel's is our inference)."""
    return "kvm" if os.environ.get("LABKIT_VM_ACCEL") == "kvm" else "tcg,thread=single"


def machine_argv(memory: int, cpus: int) -> list[str]:
    """qemu with the lab VM's machine and nothing attached: q35, accel()'s accelerator (the
    host's CPU under KVM, qemu's "max" model under TCG), no default devices, no display."""
    accelerator = accel()
    return ["qemu-system-x86_64", "-machine", "q35", "-accel", accelerator,
            "-cpu", "host" if accelerator == "kvm" else "max",
            "-smp", str(cpus), "-m", str(memory), "-nodefaults", "-no-reboot",
            "-display", "none", "-monitor", "none"]


# What `./lab vm test --ci` leaves out, so that CI's run fits its time under TCG: the
# files that test the host-side tooling (shellcheck, the Vagrantfile, provisioning a
# fresh root: the image build itself runs that provisioning), the student versions
# of every notebook (tests/test_exercises.py, which runs them all again), and the
# notebooks that need neither cgroup v2 nor tracing. Kept: every cgroup, trace,
# cleanup, device, mount, user, network and full-container test, and nbval of
# notebooks 06, 08 and 09. The full suite is `./lab vm test` without --ci.
CI_LEAVES_OUT = ("tests/test_scripts.py", "tests/test_vagrant.py", "tests/test_exercises.py",
                 "notebooks/00-welcome.ipynb", "notebooks/01-pid-namespace.ipynb",
                 "notebooks/02-uts-and-ipc.ipynb", "notebooks/03-mount-namespace.ipynb",
                 "notebooks/04-user-namespace.ipynb", "notebooks/05-network-namespace.ipynb",
                 "notebooks/07-cgroups-io-and-network.ipynb", "notebooks/10-vms-and-containers.ipynb")

# The test suite's download cache (tests/test_scripts.py: a debootstrap tarball, apt's
# and pip's downloads), shared with the VM so that its provisioning test does not
# download and unpack Debian again under TCG.
TEST_CACHE = os.environ.get("LABKIT_DEBOOTSTRAP_CACHE", "/var/cache/labkit/debootstrap")
MOUNT_TEST_CACHE = (f"mkdir -p {TEST_CACHE} && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "
                    f"labkit-test-cache {TEST_CACHE}\n")


def boot(image: Image, job: str, port: int | None, timeout: float, memory: int, cpus: int) -> int:
    """Boot the image with the job, print its output as it comes, return its exit status."""
    os.makedirs(TEST_CACHE, exist_ok=True)
    run = tempfile.mkdtemp(prefix="labkit-vm-")
    try:
        with open(f"{run}/job", "w") as f:
            f.write(job)
        if os.path.isdir(HOST_CA_DIR):
            shutil.copytree(HOST_CA_DIR, f"{run}/ca")
        out = f"{run}/output.log"
        open(out, "w").close()
        fwd = f",hostfwd=tcp:127.0.0.1:{port}-:8888" if port else ""
        argv = machine_argv(memory, cpus) + [
            "-kernel", image.kernel, "-initrd", image.initrd,
            "-append", "root=/dev/vda rw console=ttyS0 labkit.job=1 systemd.show_status=0 quiet",
            "-drive", f"file={image.disk},format=raw,if=virtio,snapshot=on",
            "-drive", f"file={image.swap},format=raw,if=virtio,snapshot=on",
            "-virtfs", f"local,path={REPO},mount_tag=labkit,security_model=passthrough,id=labkit",
            "-virtfs", f"local,path={run},mount_tag=labkit-run,security_model=passthrough,id=run",
            "-virtfs", f"local,path={TEST_CACHE},mount_tag=labkit-test-cache,security_model=passthrough,id=cache",
            "-nic", f"user,model=virtio-net-pci{fwd}",
            "-serial", f"file:{run}/console.log", "-serial", f"file:{out}",
        ]
        started = time.monotonic()
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        done = threading.Event()
        tail = threading.Thread(target=follow, args=(out, done), daemon=True)
        tail.start()
        try:
            qemu.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.wait()
            log(f"timed out after {timeout:.0f} s; the VM's console ends with:")
            print_tail(f"{run}/console.log")
            return 124
        finally:
            if qemu.poll() is None:
                qemu.kill()
                qemu.wait()
            done.set()
            tail.join()
        try:
            with open(f"{run}/status") as f:
                status = int(f.read())
        except (FileNotFoundError, ValueError):
            log(f"the VM stopped (qemu exit {qemu.returncode}) before the job ended; its console ends with:")
            print_tail(f"{run}/console.log")
            return 125
        log(f"{image.release}: the job exited {status} after {time.monotonic() - started:.0f} s (boot included)")
        return status
    finally:
        shutil.rmtree(run, ignore_errors=True)


def follow(path: str, done: threading.Event) -> None:
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk.replace(b"\r\n", b"\n"))
                sys.stdout.flush()
            elif done.is_set():
                return
            else:
                time.sleep(0.2)


def print_tail(path: str, lines: int = 40) -> None:
    try:
        with open(path, errors="replace") as f:
            sys.stderr.write("".join(f.readlines()[-lines:]))
    except FileNotFoundError:
        pass


def ready_image(release: str, force: bool = False) -> Image:
    if os.geteuid() != 0:
        fail("needs root (debootstrap, chroot, qemu's 9p as root): run it as root")
    for tool in ("debootstrap", "qemu-system-x86_64", "mkfs.ext4", "unshare"):
        if not shutil.which(tool):
            fail(f"{tool} not found: run scripts/setup.sh --vm to install what the lab VM needs")
    image = Image(release)
    if force or not image.current():
        image.build()
    return image


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./lab vm", allow_abbrev=False,
                                     description="The lab VM (Debian, systemd, cgroup v2) under qemu.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "test", "run", "box"):
        p = sub.add_parser(name, allow_abbrev=False)
        p.add_argument("--release", choices=sorted(RELEASES), default=DEFAULT_RELEASE)
        if name == "box":
            p.add_argument("--arch", choices=("amd64", "arm64"), default="amd64")
            p.add_argument("--out", default=os.path.join(REPO, "vagrant"),
                           help="where the boxes, labkit.json, the WSL tarball and user-data go")
            p.add_argument("--base-url", default=None,
                           help="where the class downloads the boxes from (labkit.json's URLs; "
                                "default: file:// of --out)")
        elif name == "build":
            p.add_argument("--force", action="store_true", help="rebuild even if the image is current")
        else:
            if name == "test":
                p.add_argument("--ci", action="store_true", help="CI's subset (see CI_LEAVES_OUT)")
            p.add_argument("--port", type=int, default=None, help="forward 127.0.0.1:PORT to the VM's 8888")
            p.add_argument("--timeout", type=float, default=float(os.environ.get("LABKIT_VM_TIMEOUT", 7200)))
            p.add_argument("--memory", type=int, default=4096, help="MiB (the Vagrantfile's default)")
            p.add_argument("--cpus", type=int, default=2)
    # What labvm does not know goes to the job: pytest's options for `test`, the
    # command for `run` (after `--`, which ends labvm's own options).
    split = argv.index("--") if "--" in argv else len(argv)
    opts, unknown = parser.parse_known_args(argv[:split])
    if opts.command in ("build", "box") and (unknown or argv[split + 1:]):
        fail(f"vm {opts.command}: unexpected arguments {unknown + argv[split + 1:]}")
    if opts.command == "box":
        import labbox                      # scripts/labbox.py: the boxes, the catalog, WSL, cloud-init
        return labbox.main(opts.release, opts.arch, opts.out, opts.base_url)
    image = ready_image(opts.release, getattr(opts, "force", False))
    if opts.command == "build":
        return 0
    args = unknown + argv[split + 1:]
    if opts.command == "test":
        if opts.ci:
            args = [f"--ignore={path}" for path in CI_LEAVES_OUT] + args
        job = MOUNT_TEST_CACHE + f"cd /labkit && exec ./lab test {shlex.join(args)}\n"
    else:
        if not args:
            fail("vm run: no command: use ./lab vm run -- CMD [ARG...]")
        job = f"cd /labkit && exec {shlex.join(args)}\n"
    return boot(image, job, opts.port, opts.timeout, opts.memory, opts.cpus)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
