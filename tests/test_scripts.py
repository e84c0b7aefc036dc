"""The shell scripts: shellcheck-clean, LF line endings, and the lab VM's
provisioning run twice on a fresh Debian root, the second run a no-op.

The fresh root is a debootstrap of Debian 12 (what the lab VM's box runs),
made once and kept as a tarball in /var/cache/labkit/debootstrap (outside the
repository; LABKIT_DEBOOTSTRAP_CACHE moves it). Each test run unpacks a new
copy, so every run starts from a root that has never seen labkit.

The provisioning runs through labkit's own launch pipeline, in a new mount
namespace and a new PID namespace, chrooted into the fresh root. The root's
/proc, /sys, /dev and the download caches are mounted inside that mount
namespace only (made private first, so nothing propagates to the host): when
its last process exits the kernel unmounts all of them, on every path, even a
kill -9 (mount_namespaces(7)); killing its PID 1 kills every process left in
it (pid_namespaces(7)).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import nbformat
import pytest

from labkit import exercises, kernel, spawn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("LABKIT_DEBOOTSTRAP_CACHE", "/var/cache/labkit/debootstrap")
SUITE = "bookworm"                     # Debian 12, the lab VM's box
MIRROR = "http://deb.debian.org/debian"
# What a Debian cloud image or Vagrant box has beyond minbase: an init that is
# systemd, sudo, and the certificates pip needs.
INCLUDE = "systemd,systemd-sysv,sudo,ca-certificates"
SCRIPTS_EXPECTED = {"lab", ".ci/run", "scripts/setup.sh", "scripts/jupyter-service.sh",
                    "vagrant/provision.sh"}
# Paths of the fresh root a provisioning run may touch without changing the
# system: kernel filesystems, the download caches, scratch space.
VOLATILE = ("proc", "sys", "dev", "tmp", "var/tmp", "root/.cache", "var/cache/apt/archives")


def repo_files() -> list[str]:
    """Files of the working tree that git tracks or would track (not ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return sorted(f for f in set(out.split("\0")) if f and os.path.isfile(os.path.join(REPO, f)))


def is_shell_script(path: str) -> bool:
    """A .sh file, or a file whose #! line names sh or bash."""
    if path.endswith(".sh"):
        return True
    with open(os.path.join(REPO, path), "rb") as f:
        first = f.readline(200)
    return re.match(rb"#!\s*\S*(/|env\s+)(ba)?sh\b", first) is not None


SHELL_SCRIPTS = [f for f in repo_files() if is_shell_script(f)]


def test_every_known_shell_script_is_found():
    assert SCRIPTS_EXPECTED <= set(SHELL_SCRIPTS), SHELL_SCRIPTS


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shellcheck(script):
    result = subprocess.run(["shellcheck", "--external-sources", "--source-path=SCRIPTDIR", script],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_are_checked_out_with_lf(script):
    """.gitattributes makes git write LF even on Windows (core.autocrlf=true):
    a CR at a line's end breaks bash inside the VM ($'\\r': command not found)."""
    attr = subprocess.run(["git", "check-attr", "eol", "--", script], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    assert attr.strip().endswith("eol: lf"), attr
    with open(os.path.join(REPO, script), "rb") as f:
        assert b"\r" not in f.read()


def test_gitattributes_beats_a_windows_checkout(tmp_path):
    """Clone the committed repository with core.autocrlf=true, as Git for
    Windows does by default: shell scripts must still have LF endings."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "-c", "core.autocrlf=true", "clone", "-q", REPO, str(clone)], check=True)
    committed = subprocess.run(["git", "ls-files"], cwd=clone, capture_output=True, text=True,
                               check=True).stdout.split()
    if ".gitattributes" not in committed:
        pytest.fail(".gitattributes is not committed")
    scripts = [f for f in SHELL_SCRIPTS if f in committed]
    assert scripts
    for script in scripts:
        assert b"\r\n" not in (clone / script).read_bytes(), f"{script} has CRLF endings"


class FreshRoot(spawn.Primitive):
    """A chroot into ``root`` inside new mount and PID namespaces, with the
    kernel filesystems and the bind mounts ``binds`` (host dir -> path in root)."""

    name = "fresh-root"
    flags = kernel.CLONE_NEWNS | kernel.CLONE_NEWPID

    def __init__(self, root: str, binds: dict[str, str]) -> None:
        self.root = root
        # Every path is computed here: enter() runs between fork and exec.
        self.mounts = [("proc", f"{root}/proc", "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC),
                       ("sysfs", f"{root}/sys", "sysfs", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC
                        | kernel.MS_RDONLY),
                       ("/dev", f"{root}/dev", None, kernel.MS_BIND),
                       ("/dev/pts", f"{root}/dev/pts", None, kernel.MS_BIND)]
        self.mounts += [(src, f"{root}/{dst.lstrip('/')}", None, kernel.MS_BIND) for src, dst in binds.items()]

    def enter(self) -> None:
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)   # nothing goes back to the host
        for source, target, fstype, flags in self.mounts:
            kernel.mount(source, target, fstype, flags)
        os.chroot(self.root)
        os.chdir("/")


class PrivateMounts(spawn.Primitive):
    """Only a private mount namespace: whatever the command mounts dies with it."""

    name = "private-mounts"
    flags = kernel.CLONE_NEWNS | kernel.CLONE_NEWPID

    def enter(self) -> None:
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)


HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"      # Debian's system bundle
# pip uses its own bundle unless told: point it at the system one (copied from the host).
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "PIP_CERT": HOST_CA_BUNDLE}


def assert_namespace_gone(mnt: int) -> None:
    """No process is left in the mount namespace ``mnt`` (so its mounts are gone)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            assert os.stat(f"/proc/{pid}/ns/mnt").st_ino != mnt, f"PID {pid} still holds the chroot's mounts"
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass


def run_contained(argv: list[str], prim: spawn.Primitive, timeout: float) -> spawn.Result:
    """Run ``argv`` to completion under ``prim``; check its mount namespace is gone after."""
    with spawn.spawn(argv, [prim], env=HOST_ENV) as proc:
        mnt = proc.namespaces()["mnt"]
        if proc.wait(timeout) is None:
            proc.kill()      # PID 1 of its namespace: the kernel kills the rest
            proc.wait()
            pytest.fail(f"{argv} did not finish within {timeout} s:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    assert_namespace_gone(mnt)
    return spawn.Result(proc.returncode or 0, proc.stdout, proc.stderr)


def remove_stale(parent: str, prefix: str) -> None:
    """Remove ``parent/prefix<PID>-*`` directories whose test process is dead
    (left by a run that was killed before its cleanup)."""
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        match = re.fullmatch(re.escape(prefix) + r"(\d+)-\w+", name)
        path = os.path.join(parent, name)
        if match and not os.path.exists(f"/proc/{match.group(1)}") and not host_mounts_under(path):
            shutil.rmtree(path, ignore_errors=True)


def fresh_root_tarball() -> str:
    """The cached tarball of a fresh Debian root; debootstrap it on first use."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    tarball = os.path.join(CACHE, f"{SUITE}-{arch}.tar")
    if os.path.exists(tarball):
        return tarball
    if not shutil.which("debootstrap"):
        pytest.fail("debootstrap is not installed: scripts/setup.sh --test installs it")
    os.makedirs(CACHE, exist_ok=True)
    remove_stale(CACHE, "build-")
    work = tempfile.mkdtemp(prefix=f"build-{os.getpid()}-", dir=CACHE)
    try:
        # debootstrap mounts /proc and /sys in the new root itself: in a private
        # mount namespace those mounts cannot outlive it, even if it fails.
        result = run_contained(["debootstrap", "--variant=minbase", f"--include={INCLUDE}",
                                SUITE, f"{work}/root", MIRROR], PrivateMounts(), timeout=900)
        assert result.returncode == 0, f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        subprocess.run(["tar", "-C", f"{work}/root", "--numeric-owner", "-cf", f"{work}/root.tar", "."],
                       check=True)
        os.rename(f"{work}/root.tar", tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def tree_state(root: str) -> dict[str, tuple]:
    """Every path of the root but the volatile ones: type, mode, owner, size, mtime, link."""
    state = {}
    skip = {os.path.join(root, v) for v in VOLATILE}
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip]
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else ""
            state[path[len(root):]] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, link)
    return state


def host_mounts_under(path: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(path)]


@pytest.fixture
def fresh_root():
    """A new copy of the fresh Debian root with this repository at /labkit."""
    tarball = fresh_root_tarball()
    remove_stale("/var/tmp", "labkit-fresh-root-")
    root = tempfile.mkdtemp(prefix=f"labkit-fresh-root-{os.getpid()}-", dir="/var/tmp")
    try:
        subprocess.run(["tar", "-C", root, "--numeric-owner", "-xpf", tarball], check=True)
        for f in repo_files():
            os.makedirs(os.path.dirname(f"{root}/labkit/{f}"), exist_ok=True)
            shutil.copy2(os.path.join(REPO, f), f"{root}/labkit/{f}")
        # The fresh root reaches the network as the host does: its DNS servers,
        # and the certificate authorities it trusts (a network may inspect TLS).
        shutil.copy2("/etc/resolv.conf", f"{root}/etc/resolv.conf")
        shutil.copy2(HOST_CA_BUNDLE, f"{root}{HOST_CA_BUNDLE}")
        yield root
    finally:
        assert not host_mounts_under(root), "a mount of the fresh root reached the host"
        shutil.rmtree(root)


def test_provisioning_a_fresh_debian_twice_changes_nothing_the_second_time(fresh_root):
    binds = {}
    for cache, inside in (("apt-archives", "/var/cache/apt/archives"), ("pip", "/root/.cache/pip")):
        os.makedirs(f"{CACHE}/{cache}/partial" if cache == "apt-archives" else f"{CACHE}/{cache}", exist_ok=True)
        os.makedirs(fresh_root + inside, exist_ok=True)
        binds[f"{CACHE}/{cache}"] = inside
    # As the Vagrantfile runs it (its provisioner's env sets LABKIT_JUPYTER_IP).
    provision = ["/usr/bin/env", "LABKIT_JUPYTER_IP=0.0.0.0", "/bin/bash", "/labkit/vagrant/provision.sh"]

    first = run_contained(provision, FreshRoot(fresh_root, binds), timeout=900)
    out1 = first.stdout + first.stderr
    assert first.returncode == 0, out1[-5000:]
    assert "setup: installing Debian packages" in out1
    assert "setup: installing the Python packages" in out1
    assert "provision: changed /etc/profile.d/labkit.sh" in out1
    assert f"jupyter-service: changed {HANDOUTS} ({len(NUMBERED)} handouts built)" in out1

    before = tree_state(fresh_root)
    second = run_contained(provision, FreshRoot(fresh_root, binds), timeout=300)
    out2 = second.stdout + second.stderr
    assert second.returncode == 0, out2[-5000:]
    assert "installing" not in out2 and "changed /" not in out2, out2
    assert "jupyter-service: nothing changed" in out2
    assert "provision: nothing changed" in out2
    after = tree_state(fresh_root)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert not changed, f"the second run changed {sorted(changed)[:20]}"

    # What the first run left: the service enabled for boot, one token, a URL with it.
    wants = f"{fresh_root}/etc/systemd/system/multi-user.target.wants/labkit-jupyter.service"
    assert os.readlink(wants) == "/etc/systemd/system/labkit-jupyter.service"
    env = f"{fresh_root}/var/lib/labkit/jupyter.env"
    assert os.stat(env).st_mode & 0o777 == 0o600
    with open(env) as f:
        token = re.fullmatch(r"JUPYTER_TOKEN=([0-9a-f]{48})\n", f.read())
    assert token
    with open(f"{fresh_root}/etc/systemd/system/labkit-jupyter.service") as f:
        unit = f.read()
    assert ("ExecStart=/opt/labkit/venv/bin/jupyter lab --allow-root --no-browser --ip 0.0.0.0 --port 8888 "
            f"--ServerApp.root_dir={HANDOUTS}\n") in unit
    assert f"WorkingDirectory={HANDOUTS}\n" in unit
    assert_handouts(fresh_root + HANDOUTS, NUMBERED)
    check = run_contained(["/bin/bash", "-c",
                           "set -e; labkit-token; visudo -cf /etc/sudoers.d/labkit; "
                           "systemd-analyze verify /etc/systemd/system/labkit-jupyter.service; "
                           "sudo labkit --help >/dev/null; . /etc/profile.d/labkit.sh; command -v labkit; "
                           "python -c 'import labkit, jupyterlab, matplotlib, pyroute2; print(labkit.__file__)'"],
                          FreshRoot(fresh_root, binds), timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"http://127.0.0.1:8888/lab?token={token.group(1)}" in check.stdout
    assert "/opt/labkit/venv/bin/labkit" in check.stdout            # on PATH for login shells
    assert "/labkit/labkit/__init__.py" in check.stdout             # the editable install of /labkit

    # What systemd will run at boot serves JupyterLab to the token only. Run as
    # systemd would (ExecStart, with the variables of EnvironmentFile= and
    # Environment=), but on 127.0.0.1 and a free port: the fresh root shares the
    # host's network namespace.
    argv = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1).split()
    argv[argv.index("--ip") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = port = str(free_port())
    env = dict(HOST_ENV, JUPYTER_TOKEN=token.group(1),
               **dict(v.split("=", 1) for v in re.findall(r"^Environment=(.+)$", unit, re.M)))
    with spawn.spawn(argv, [FreshRoot(fresh_root, binds)], env=env) as server:
        mnt = server.namespaces()["mnt"]
        status = f"http://127.0.0.1:{port}/api/status"
        assert http_code(f"{status}?token={token.group(1)}", server) == 200
        assert http_code(status, server) == 403
        assert http_code(f"{status}?token=not-the-token", server) == 403
        # The file browser's root is the handouts: the solutions are not in it.
        with NO_PROXY.open(f"http://127.0.0.1:{port}/api/contents/?token={token.group(1)}", timeout=30) as r:
            assert sorted(i["name"] for i in json.load(r)["content"]) == NUMBERED
    assert_namespace_gone(mnt)

    # Running it again never overwrites a student's work: an edited handout is kept, a
    # deleted one is built again, and only that one.
    edited, deleted = (f"{fresh_root}{HANDOUTS}/{name}" for name in NUMBERED[:2])
    nb = nbformat.read(edited, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("answer = 'mine'"))
    nbformat.write(nb, edited)
    os.unlink(deleted)
    again = run_contained(["/usr/bin/env", "LABKIT_JUPYTER_IP=0.0.0.0", "LABKIT_VENV=/opt/labkit/venv",
                           "/bin/bash", "/labkit/scripts/jupyter-service.sh"], FreshRoot(fresh_root, binds), timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"jupyter-service: changed {HANDOUTS} (1 handouts built)" in again.stdout, again.stdout
    assert nbformat.read(edited, as_version=4).cells[-1].source == "answer = 'mine'"
    assert_handouts(fresh_root + HANDOUTS, NUMBERED)


HANDOUTS = "/srv/labkit/handouts"          # scripts/jupyter-service.sh's default
NUMBERED = sorted(n for n in os.listdir(os.path.join(REPO, "notebooks")) if re.fullmatch(r"\d\d-.*\.ipynb", n))


def assert_handouts(folder: str, names: list[str]) -> None:
    """``folder`` holds the student versions of ``names`` (no answer, check cells locked), nothing else."""
    assert sorted(os.listdir(folder)) == names
    for name in names:
        nb = nbformat.read(os.path.join(folder, name), as_version=4)
        assert nb.metadata["labkit"] == {"student_version": True, "solution": name}
        assert not any(exercises.BEGIN in c.source for c in nb.cells), f"{name} holds a solution"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # 127.0.0.1 is direct


def http_code(url: str, server: spawn.Process, timeout: float = 60) -> int:
    """The HTTP status of GET ``url``, waiting up to ``timeout`` s for the server to listen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with NO_PROXY.open(url, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, ConnectionError):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {url}: {server.stdout[-2000:]}{server.stderr[-2000:]}")
            time.sleep(0.5)
