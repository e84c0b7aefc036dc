"""The shell scripts: shellcheck-clean, LF line endings, and the lab VM's
provisioning run twice on a fresh Debian root, the second run a no-op. And the
package: what pyproject declares, the classroom's lock, `pip install .`.

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
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import zipfile

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
                           "/bin/bash", "/labkit/scripts/jupyter-service.sh"],
                          FreshRoot(fresh_root, binds), timeout=120)
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


# --- The package: what pyproject declares, the classroom's lock, the license -------------

LOCK = os.path.join(REPO, "requirements.lock")
# The Pythons a class runs (Debian 12's python3.11, Debian 13's python3.13) on the lab VM's
# architectures (x86_64; aarch64 on Apple Silicon Macs).
DEBIAN_PYTHONS = ("3.11.2", "3.13.5")
ARCHES = ("x86_64", "aarch64")


def pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def declared() -> list[Requirement]:
    """pyproject's runtime dependencies and those of every extra, but labkit's own extras."""
    project = pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "labkit"]


def pins(path: str) -> dict[str, str]:
    """Every ``name==version`` line of a requirements file: canonical name -> version."""
    with open(path) as f:
        found = (re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line) for line in f)
        return {canonicalize_name(m.group(1)): m.group(2) for m in found if m}


def lock_entries(path: str = LOCK) -> dict[str, dict]:
    """pip-compile's output: canonical name -> {"version", "hashes", "via"} (via: what asked for it)."""
    entries: dict[str, dict] = {}
    entry: dict = {}
    with open(path) as f:
        for line in f:
            if m := re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)", line):
                entry = entries[canonicalize_name(m.group(1))] = {"version": m.group(2), "hashes": [], "via": []}
            elif m := re.match(r"\s+--hash=sha256:([0-9a-f]{64})", line):
                entry["hashes"].append(m.group(1))
            elif entry and (m := re.match(r"\s+#\s+(?:via\s+)?(\S.*)$", line)):
                entry["via"].append(m.group(1).strip())
    return entries


def test_requirements_txt_pins_exactly_what_pyproject_declares():
    """The classroom's set is labkit's dependencies, each at one version pyproject allows."""
    classroom = pins(os.path.join(REPO, "requirements.txt"))
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in classroom, f"{req.name} is declared in pyproject.toml but not pinned in requirements.txt"
        assert req.specifier.contains(classroom[name]), f"requirements.txt pins {name}=={classroom[name]}, " \
                                                        f"outside pyproject's {req}"
    assert set(classroom) == {canonicalize_name(r.name) for r in declared()}


def test_pyroute2_and_the_seccomp_binding_are_runtime_dependencies():
    runtime = {canonicalize_name(Requirement(r).name): Requirement(r)
               for r in pyproject()["project"]["dependencies"]}
    assert set(runtime) == {"pyroute2", "pyseccomp"}
    assert runtime["pyroute2"].specifier.contains("0.9.7")
    assert not runtime["pyroute2"].specifier.contains("0.10.0"), "pyroute2 needs an upper bound"


def test_the_lock_is_made_from_requirements_txt_and_hashes_every_package():
    """Every pin of requirements.txt is in the lock at the same version, the lock's
    top-level entries are requirements.txt's (a lock not made again after an edit
    fails here), and every package in it has its hashes."""
    classroom = pins(os.path.join(REPO, "requirements.txt"))
    lock = lock_entries()
    assert len(lock) > len(classroom)
    for name, version in classroom.items():
        assert name in lock, f"{name} is in requirements.txt, not in requirements.lock: run scripts/lock.sh"
        assert lock[name]["version"] == version, f"{name}: requirements.txt pins {version}, " \
                                                 f"the lock {lock[name]['version']}: run scripts/lock.sh"
    top = {name for name, e in lock.items() if "-r requirements.txt" in e["via"]}
    assert top == set(classroom), "requirements.lock is not made from this requirements.txt: run scripts/lock.sh"
    assert all(e["hashes"] for e in lock.values()), [n for n, e in lock.items() if not e["hashes"]]
    assert pins(LOCK) == {n: e["version"] for n, e in lock.items()}      # nothing left unparsed


def test_the_e2e_lock_agrees_with_the_classroom_lock():
    e2e = lock_entries(os.path.join(REPO, "e2e", "requirements.lock"))
    assert set(pins(os.path.join(REPO, "e2e", "requirements.txt"))) <= set(e2e)
    assert all(e["hashes"] for e in e2e.values())
    lock = lock_entries()
    assert all(lock[n]["version"] == e["version"] for n, e in e2e.items() if n in lock)


def manylinux_tags(arch: str) -> list[str]:
    """Every manylinux platform tag a glibc 2.36 system (Debian 12; 13 has 2.41) accepts
    (PEP 600, and the older aliases of PEP 513, 571 and 599)."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(41, 4, -1)]
    tags += [f"manylinux2014_{arch}", f"linux_{arch}"]
    if arch == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return tags


def marker_env(python: str, arch: str) -> dict[str, str]:
    """The values of PEP 508's environment markers on Debian with CPython ``python``."""
    return {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python,
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": python, "sys_platform": "linux", "os_name": "posix",
            "platform_system": "Linux", "platform_machine": arch, "platform_release": "",
            "platform_version": ""}


@pytest.mark.slow
@pytest.mark.parametrize("python", DEBIAN_PYTHONS)
@pytest.mark.parametrize("arch", ARCHES)
def test_the_lock_installs_on_debian_12_and_13(python, arch, tmp_path):
    """One lock for every machine of a class: each pinned release has a wheel for that
    Python and architecture whose sha256 is in the lock (pip download from PyPI, in
    hash-checking mode), and every package a wheel requires there (its markers evaluated
    for that Python, its extras followed) is in the lock."""
    platforms = [arg for tag in manylinux_tags(arch) for arg in ("--platform", tag)]
    result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes",
                             "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
                             *platforms, "-d", str(tmp_path), "-r", LOCK],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lock = lock_entries()
    wheels = {canonicalize_name(w.split("-")[0]): tmp_path / w for w in os.listdir(tmp_path)}
    assert set(wheels) == set(lock)

    requires = {}
    for name, wheel in wheels.items():
        with zipfile.ZipFile(wheel) as z:
            metadata = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            text = z.read(metadata).decode()
        requires[name] = [Requirement(r) for r in re.findall(r"^Requires-Dist: (.+)$", text, re.M)]
    env = marker_env(python, arch)
    wanted = {canonicalize_name(n): set() for n in pins(os.path.join(REPO, "requirements.txt"))}
    todo = list(wanted)
    while todo:
        name = todo.pop()
        for req in requires[name]:
            extras = wanted[name] | {""}
            if req.marker and not any(req.marker.evaluate(dict(env, extra=e)) for e in extras):
                continue
            dep = canonicalize_name(req.name)
            assert dep in lock, f"on Python {python}, {name} requires {req}, which is not in the lock"
            assert req.specifier.contains(lock[dep]["version"], prereleases=True), \
                f"on Python {python}, {name} requires {req}; the lock has {lock[dep]['version']}"
            new = dep not in wanted or not set(req.extras) <= wanted[dep]
            wanted.setdefault(dep, set()).update(req.extras)
            if new:
                todo.append(dep)


def test_license_is_mit_as_pyproject_says():
    with open(os.path.join(REPO, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the labkit authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text
    assert pyproject()["project"]["license"] == {"text": "MIT"}


def test_the_version_has_one_source():
    """pyproject reads labkit.__version__ (what `labkit --version` prints); it states none of its own."""
    conf = pyproject()
    assert "version" not in conf["project"] and "version" in conf["project"]["dynamic"]
    assert conf["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "labkit.__version__"}


def pip_install(tmp_path, extras: str = ""):
    """A fresh venv outside the repository with ``pip install SRC[extras]`` (not editable)
    of a copy of this checkout, at the lock's versions; its bin directory. (The versions
    only: hashes in a constraints file put pip in hash-checking mode, which refuses a
    directory and every dependency pyproject gives as a range.)"""
    src = tmp_path / "src"
    for f in repo_files():
        if f.startswith("labkit/") or f in ("pyproject.toml", "README.md", "LICENSE"):
            os.makedirs(os.path.dirname(src / f), exist_ok=True)
            shutil.copy2(os.path.join(REPO, f), src / f)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in pins(LOCK).items()))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                             "-c", str(constraints), f"{src}{extras}"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return venv / "bin"


@pytest.fixture
def installed(tmp_path):
    return pip_install(tmp_path)


def clean_env(bin_dir=None) -> dict[str, str]:
    """This process's environment without what would make Python find the checkout
    (and with ``bin_dir`` first on PATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if bin_dir:
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return env


@pytest.mark.slow
def test_pip_install_gives_a_labkit_that_runs(installed, tmp_path):
    """`pip install .` into an empty venv installs labkit and its runtime dependencies
    only (no notebook stack), at the lock's versions, and they suffice: `labkit doctor`
    runs and `labkit run -- /bin/true` starts a container with every default."""
    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)

    listed = run([str(installed / "pip"), "list", "--format=json", "--disable-pip-version-check"])
    got = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    lock = lock_entries()
    runtime = got.keys() - {"labkit", "pip", "setuptools"}
    assert {"pyroute2", "pyseccomp"} <= runtime
    assert not runtime & {"jupyterlab", "matplotlib", "nbformat", "pytest"}, runtime
    assert {n: got[n] for n in runtime} == {n: lock[n]["version"] for n in runtime}

    where = run([str(installed / "python"), "-c", "import importlib.metadata as m, labkit; "
                 "print(labkit.__file__); print(m.version('labkit') == labkit.__version__)"])
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(installed.parent / "lib")) and where.stdout.endswith("\nTrue\n"), where.stdout

    doctor = run([str(installed / "labkit"), "doctor"])
    assert doctor.returncode == 0 and doctor.stdout.endswith("\nready\n"), doctor.stdout + doctor.stderr
    true = run([str(installed / "labkit"), "run", "--", "/bin/true"])
    assert true.returncode == 0, true.stdout + true.stderr


@pytest.mark.slow
def test_pip_install_with_the_test_extra_runs_a_notebook(tmp_path):
    """`pip install '.[test]'` (so [lab] too) into an empty venv runs a notebook that
    draws with matplotlib and labkit.viz: nbval, strict, in that venv only (the
    notebook copied out of the repository, so the kernel imports the installed labkit)."""
    bin_dir = pip_install(tmp_path, "[test]")
    name = "02-uts-and-ipc.ipynb"
    for f in (name, "nbval-sanitize.cfg"):
        shutil.copy2(os.path.join(REPO, "notebooks", f), tmp_path / f)
    result = subprocess.run([str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--nbval", "--nbval-current-env", "--nbval-sanitize-with", "nbval-sanitize.cfg",
                             "-W", "ignore:Overlapping options from comments and metadata", name],
                            cwd=tmp_path, env=clean_env(bin_dir), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert re.search(r"\b\d+ passed", result.stdout), result.stdout[-2000:]
    where = subprocess.run([str(bin_dir / "python"), "-c", "import labkit; print(labkit.__file__)"],
                           cwd=tmp_path, env=clean_env(bin_dir), capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(bin_dir.parent / "lib")), where.stdout
