"""Integration tests: real namespaces on the real kernel, checked from the host side."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import labkit_cli

from labkit import doctor, ipc, kernel, pid, spawn, uts
from labkit.errors import CommandNotFoundError, KernelError, LabkitError

ALL = lambda: [pid.PidNamespace(), uts.UtsNamespace("box"), ipc.IpcNamespace()]  # noqa: E731


def test_namespace_inodes_differ_from_the_host(no_leaks):
    host = {ns: kernel.ns_inode("self", ns) for ns in kernel.NAMESPACES}
    with spawn.spawn(["sleep", "30"], ALL()) as proc:
        inside = proc.namespaces()
    for ns in ("pid", "uts", "ipc", "mnt"):
        assert inside[ns] != host[ns], f"{ns} namespace was not new"
    for ns in ("net", "user", "cgroup"):
        assert inside[ns] == host[ns], f"{ns} namespace changed though not asked for"


def test_only_the_namespaces_asked_for_are_new(no_leaks):
    host = kernel.ns_inode("self", "uts")
    with spawn.spawn(["sleep", "30"], [ipc.IpcNamespace()]) as proc:
        inside = proc.namespaces()
    assert inside["uts"] == host
    assert inside["ipc"] != kernel.ns_inode("self", "ipc")


def test_command_is_pid_1_and_sees_only_its_processes(no_leaks):
    r = spawn.run(["sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'"], ALL())
    assert r.returncode == 0
    own_pid, visible = r.stdout.split()
    assert own_pid == "1"
    assert int(visible) <= 3        # sh, the pipeline's ls and grep


def test_nspid_maps_host_pid_to_container_pid(no_leaks):
    with spawn.spawn(["sh", "-c", "sleep 30 & exec sleep 30"], ALL()) as proc:
        time.sleep(0.2)
        host_ns = kernel.ns_inode(proc.pid, "pid")
        entries = pid.processes_in(host_ns)
        assert pid.nspid(proc.pid) == [proc.pid, 1]
        assert [e.container_pid for e in entries] == [1, 2]
        assert entries[0].host_pid == proc.pid
        assert entries[1].host_ppid == proc.pid          # PID 1 is the parent


def test_hostname_inside_does_not_change_the_host(no_leaks):
    before = socket.gethostname()
    r = spawn.run(["hostname"], [uts.UtsNamespace("inside-box", "lab.local")])
    assert r.stdout.strip() == "inside-box"
    r = spawn.run(["cat", "/proc/sys/kernel/domainname"], [uts.UtsNamespace("x", "lab.local")])
    assert r.stdout.strip() == "lab.local"
    assert socket.gethostname() == before


def test_ipc_object_is_invisible_across_namespaces(no_leaks):
    key = 0x1AB5_0000 + os.getpid() % 0xFFFF
    msqid = ipc.create_queue(key)
    try:
        assert key in [q["key"] for q in ipc.message_queues()]
        r = spawn.run(["cat", "/proc/sysvipc/msg"], [ipc.IpcNamespace()])
        assert f"{key:d}" not in r.stdout.split()
        r = spawn.run(["cat", "/proc/sysvipc/msg"], [])           # no IPC namespace: visible
        assert f"{key:d}" in r.stdout.split()
    finally:
        ipc.remove_queue(msqid)


def test_exit_status_and_signals_are_reported(no_leaks):
    assert spawn.run(["sh", "-c", "exit 7"], ALL()).returncode == 7
    assert spawn.run(["sh", "-c", "kill -TERM $$"], [uts.UtsNamespace()]).returncode == -signal.SIGTERM
    with spawn.spawn(["sleep", "30"], ALL()) as proc:
        proc.kill(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL


def test_pid_1_ignores_signals_from_inside_but_not_sigkill_from_the_host(no_leaks):
    # pid_namespaces(7): init gets only signals it has a handler for, from inside.
    r = spawn.run(["sh", "-c", "kill -KILL $$; echo survived"], ALL())
    assert r.stdout.strip() == "survived" and r.returncode == 0


def test_killing_pid_1_kills_the_whole_namespace(no_leaks):
    with spawn.spawn(["sh", "-c", "sleep 60 & sleep 60 & wait"], ALL()) as proc:
        time.sleep(0.2)
        ns = kernel.ns_inode(proc.pid, "pid")
        assert len(pid.processes_in(ns)) == 3
        proc.kill()
        proc.wait()
    assert pid.processes_in(ns) == []


def test_command_not_found_raises_and_leaves_nothing(no_leaks):
    with pytest.raises(CommandNotFoundError, match="no-such-cmd"):
        spawn.run(["no-such-cmd"], ALL())


class Recorder(spawn.Primitive):
    """A primitive that records its hooks, and can fail in one of them."""

    name = "recorder"

    def __init__(self, log: list[str], fail_in: str = "", tag: str = "r") -> None:
        self.log, self.fail_in, self.tag = log, fail_in, tag

    def _hook(self, hook: str) -> None:
        self.log.append(f"{self.tag}.{hook}")
        if hook == self.fail_in:
            raise LabkitError(f"{hook} failed on purpose")

    def prepare(self) -> None:
        self._hook("prepare")

    def join(self, pid: int) -> None:
        self._hook("join")

    def release(self) -> None:
        self._hook("release")


@pytest.mark.parametrize("fail_in", ["", "prepare", "join"])
def test_every_release_runs_on_every_path(fail_in, no_leaks):
    log: list[str] = []
    prims = [Recorder(log, tag="a"), pid.PidNamespace(), Recorder(log, fail_in, tag="b")]
    if fail_in:
        with pytest.raises(LabkitError, match="on purpose"):
            spawn.run(["true"], prims)
    else:
        spawn.run(["true"], prims)
    assert log[-2:] == ["b.release", "a.release"]


def test_release_runs_when_the_caller_is_interrupted(no_leaks):
    log: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with spawn.spawn(["sleep", "30"], [pid.PidNamespace(), Recorder(log)]) as proc:
            raise KeyboardInterrupt
    assert log[-1] == "r.release"
    assert proc.returncode == -signal.SIGKILL


class FailingEnter(spawn.Primitive):
    name = "bad-mount"

    def enter(self) -> None:
        kernel.mount("none", "/nonexistent-labkit-dir", "tmpfs")


def test_a_refused_step_names_the_step_and_errno(no_leaks):
    with pytest.raises(KernelError) as info:
        spawn.run(["true"], [pid.PidNamespace(), FailingEnter()])
    assert "bad-mount: enter failed with ENOENT" in str(info.value)
    assert "/nonexistent-labkit-dir" in str(info.value)


class BuggyEnter(spawn.Primitive):
    name = "buggy"

    def enter(self) -> None:
        raise ValueError("not a syscall error")


def test_an_exception_in_a_child_hook_is_reported_not_swallowed(no_leaks):
    with pytest.raises(KernelError, match="buggy: enter failed with an exception: ValueError: not a syscall error"):
        spawn.run(["true"], [pid.PidNamespace(), BuggyEnter()])


def test_the_container_dies_with_its_parent():
    """PR_SET_PDEATHSIG: a kill -9 of the launcher takes the container with it."""
    code = ("import sys, time; from labkit import spawn, pid;"
            "p = spawn.spawn(['sleep', '60'], [pid.PidNamespace()]);"
            "print(p.pid, flush=True); time.sleep(60)")
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    container = int(launcher.stdout.readline())
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    for _ in range(100):
        if not os.path.exists(f"/proc/{container}"):
            break
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{container}")


ORPHAN = """
import os, sys
from labkit import kernel, spawn
kernel.prctl(36, 1)                     # PR_SET_CHILD_SUBREAPER: the orphan comes back to us
lifeline = sys.argv[1] == "lifeline"
reaped_r, reaped_w = os.pipe()          # we say when the middle one is reaped: its exit is complete
middle = os.fork()
if middle == 0:
    r, w = os.pipe2(os.O_NONBLOCK)      # the middle one holds the only write end
    if os.fork() == 0:                  # the child: armed after its parent, the middle one, is gone
        os.close(w)
        os.close(reaped_w)
        os.read(reaped_r, 1)
        spawn._parent_pid, spawn._lifeline = middle, (r if lifeline else -1)
        spawn.die_with_parent()
        os._exit(0)
    os._exit(0)
os.waitpid(middle, 0)
os.write(reaped_w, b"x")
_, status = os.waitpid(-1, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("check", ["getppid", "lifeline"])
def test_a_child_whose_parent_died_before_pdeathsig_was_armed_exits(check):
    """The kernel sends the parent-death signal only for a death after the prctl;
    die_with_parent() then finds the parent gone (a new parent PID; the lifeline
    pipe at end-of-file) and exits as SIGKILL would have: 137."""
    out = subprocess.run([sys.executable, "-c", ORPHAN, check], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["137"], out.stderr


def test_kernel_fork_skips_cpythons_at_fork_work_only_with_one_thread():
    """kernel.fork() in a process with one thread (here a child of os.fork(), as spawn's
    child A) is fork(2) itself: a real child, and no os.register_at_fork() handler runs.
    With a second thread alive it is os.fork(), which runs them."""
    r, w = os.pipe()
    child_a = os.fork()
    if child_a == 0:
        try:
            ran: list[str] = []
            os.register_at_fork(after_in_child=lambda: ran.append("at-fork handler"))

            def report(way: str, fork) -> None:
                threads = kernel.threads()
                child = fork()
                if child == 0:
                    os.write(w, b"%s: %d thread(s), parent %d, handlers run %d\n"
                             % (way.encode(), threads, os.getppid(), len(ran)))
                    os._exit(0)
                if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) != 0:
                    os._exit(2)

            report("kernel.fork", kernel.fork)
            report("os.fork", os.fork)
            stop = threading.Event()
            second = threading.Thread(target=stop.wait)
            second.start()
            report("kernel.fork", kernel.fork)
            stop.set()
            second.join()
            os._exit(0)
        except BaseException:
            os._exit(3)
    os.close(w)
    with os.fdopen(r) as f:
        reports = f.read().splitlines()
    assert os.waitstatus_to_exitcode(os.waitpid(child_a, 0)[1]) == 0
    assert reports == [f"kernel.fork: 1 thread(s), parent {child_a}, handlers run 0",
                       f"os.fork: 1 thread(s), parent {child_a}, handlers run 1",
                       f"kernel.fork: 2 thread(s), parent {child_a}, handlers run 1"], reports


# ---- the CLI, as a user runs it -------------------------------------------------

def test_cli_run_prints_hostname_and_passes_exit_status():
    r = labkit_cli("run", "--hostname", "box", "--", "sh", "-c", "hostname; exit 4")
    assert (r.returncode, r.stdout, r.stderr) == (4, "box\n", "")


def test_cli_run_attaches_stdin():
    r = labkit_cli("run", "--", "cat", input="through the pipe\n")
    assert r.stdout == "through the pipe\n"


@pytest.mark.parametrize("argv,code,message", [
    (["run", "--ns", "pid,bogus", "true"], 125, "unknown namespace 'bogus'"),
    (["run", "--hostname", "h" * 65, "true"], 125, "over the kernel's limit of 64"),
    (["run"], 125, "no command given"),
    (["run", "--", "no-such-command"], 127, "no-such-command: command not found"),
    (["run", "--", "/etc/hostname"], 126, "cannot be executed"),
    (["run", "--ns", "uts", "--", "sh", "-c", "kill -KILL $$"], 137, ""),
])
def test_cli_bad_input_is_one_clear_line(argv, code, message, no_leaks):
    r = labkit_cli(*argv)
    assert r.returncode == code
    if message:
        assert message in r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("labkit: ")
        assert "Traceback" not in r.stderr


def test_cli_not_root_is_refused_with_the_hint():
    """Really drop to an unprivileged uid in a child, then call the CLI's main()."""
    from labkit import cli

    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        sys.stderr = os.fdopen(write, "w", buffering=1)
        os.setgid(65534)
        os.setuid(65534)
        os._exit(cli.main(["run", "--", "true"]))
    os.close(write)
    message = os.read(read, 4096).decode()
    os.close(read)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 125
    assert message == "labkit: labkit needs root: run it inside the lab VM, or with sudo\n"


def test_cli_sigterm_kills_container_and_releases(no_leaks):
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "run", "--", "sleep", "60"])
    # SIGTERM once the container runs (a slow machine, such as a VM under TCG, takes
    # more than a second to start Python): its `sleep` is a grandchild of labkit.
    deadline = time.monotonic() + 60
    while not container_sleep_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM


def container_sleep_of(launcher: int) -> bool:
    """True when a `sleep` runs whose parent's parent is ``launcher`` (labkit -> relay -> PID 1)."""
    def ppid(pid: str) -> int:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return 0
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == "sleep" and ppid(str(ppid(p))) == launcher:
                    return True
        except (FileNotFoundError, ProcessLookupError):
            pass
    return False


def test_cli_run_path_imports_no_heavy_library():
    # nor what a run without --name does not use (json serves the state file of a
    # named container): each is start time (benchmarks/container_startup.py)
    code = ("import sys; from labkit import cli; cli.main(['run', '--', 'true']);"
            "print(sorted(m for m in ('pyroute2', 'matplotlib', 'jupyter', 'ipywidgets',"
            " 'IPython', 'jupyter_client', 'json') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_cli_doctor_reports_ready_here():
    r = labkit_cli("doctor")
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ready")
    r = labkit_cli("doctor", "--json")
    import json

    report = json.loads(r.stdout)
    assert report["ready"] is True
    assert {c["name"] for c in report["checks"]} >= {"root", "namespace pid", "namespace uts"}


def test_doctor_counts_a_filesystem_module_the_kernel_loads_at_first_mount():
    """Debian builds overlay as a module: a freshly booted lab VM has not registered it yet
    (it is not in /proc/filesystems), and the kernel loads it at the first mount
    (fs/filesystems.c get_fs_type -> request_module("fs-NAME")). doctor must not call
    such a kernel unready."""
    aliases = f"/lib/modules/{os.uname().release}/modules.alias"
    if not os.path.exists(aliases):
        pytest.skip("no modules.alias: this kernel has no loadable modules (the host's microVM kernel)")
    with open("/proc/filesystems") as f:
        registered = set(f.read().split())
    with open(aliases) as f:
        modules = {line.split()[1][len("fs-"):] for line in f if line.startswith("alias fs-")}
    unloaded = sorted(modules - registered)
    assert unloaded, "every filesystem module is loaded already"
    assert doctor.filesystem_support(unloaded[0]) == "supported (module, loaded by the kernel at the first mount)"
    assert doctor.filesystem_support("tmpfs") == "supported"
    assert doctor.filesystem_support("no-such-filesystem") is None


CHILD_IMPORTS = """
import os, sys
parent = os.getpid()
def hook(event, args):
    if event == "import" and os.getpid() != parent:
        os.write(2, f"child {os.getpid()} imported {args[0]}\\n".encode())
sys.addaudithook(hook)
from labkit import cli
sys.exit(cli.main(["run", "--", "echo", "hi"]))
"""


def test_the_child_imports_nothing_after_fork(no_leaks):
    """Once inside, the host's standard library is out of reach (pivot_root): any
    lazy import in the child fails. On Debian 13's lab VM os.execvpe's import of
    warnings did (spawn.py imports it): every `labkit run` exited 126."""
    r = subprocess.run([sys.executable, "-c", CHILD_IMPORTS], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    assert "imported" not in r.stderr, r.stderr
