"""Detached containers: `labkit run -d --name NAME`, then logs, stop, kill, wait, rm.

``run -d`` starts the container under a supervising labkit process and
returns at once, printing the name. The supervisor is a double fork of the
labkit command (so that it is nobody's child once that command has exited) in
a session of its own (setsid(2): no controlling terminal, so no SIGHUP when the
terminal closes). Its stdin is /dev/null and its stdout and stderr, which the
container inherits, are one file, the container's log. It waits for the
container's PID 1, releases everything the container had (processes,
cgroups, namespaces, mounts, the overlay layer, the veth: the same release()
as `labkit run`), then writes the exit status and exits.

What stays, and for how long. labkit's contract is that a container is
always removed (`--rm` is the only mode): when its command exits, nothing of
the container is left in the kernel. Its *record* stays, in
``/run/labkit/detached/NAME/``: ``log`` (stdout and stderr, in one stream),
``status`` (the exit status, once it exited) and ``supervisor`` (PID and
start time of the supervisor). The record is what lets `labkit wait NAME` and
`labkit logs NAME` answer right after the exit, as `docker wait`/`docker logs`
do on a stopped container. It is removed by `labkit rm NAME`, by the next
`labkit run -d --name NAME`, or by `labkit cleanup`; /run is a tmpfs, so a
reboot removes it too. Docker keeps the whole stopped container until
`docker rm`; labkit keeps only this record.

``stop`` and ``kill`` signal the container's PID 1 from the host, where a
PID 1 drops every signal it has no handler for but SIGKILL and SIGSTOP
(pid_namespaces(7)): so ``stop`` of a shell run without --init waits for the
whole timeout and then kills it, as `docker stop` does.

If the supervisor itself is killed (kill -9), the container dies with it
(PR_SET_PDEATHSIG of its first child, spawn.py) and `labkit cleanup` removes
what is left, the record included.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
from typing import NoReturn

from . import container
from .errors import LabkitError, UsageError
from .spawn import exit_status

RECORD_DIR = "/run/labkit/detached"
DEFAULT_STOP_TIMEOUT = 10        # seconds, as docker stop


def record(name: str) -> str:
    """The directory of a detached container's record (see the module docstring)."""
    return os.path.join(RECORD_DIR, name)


# -- run -d ------------------------------------------------------------------

def check_options(name: str | None, tty: bool, interactive: bool, restart: str) -> None:
    """What -d needs and what it cannot do; one UsageError each."""
    if not name:
        raise UsageError("-d needs --name", "name the container, e.g. labkit run -d --name web -- httpd -f")
    if tty or interactive:
        raise UsageError("-d runs without a terminal and labkit has no attach", "leave out -i/-t, or -d")
    if restart != "no":
        raise UsageError("labkit does not restart a detached container", "leave out --restart, or -d")


def run_detached(box: container.Container, argv: list[str]) -> int:
    """Start ``box`` running ``argv`` under a supervisor; print its name; return 0.

    Returns once the command has been executed (or failed to start: then the
    error is raised here, as `labkit run` would, and no record is left)."""
    assert box.name is not None
    name = box.name
    if name in container.running():
        raise UsageError(f"a container named {name} is running already", "choose another --name (see labkit ps)")
    if supervisor_alive(name):
        raise UsageError(f"the container {name} is being removed", "retry in a moment")
    directory = record(name)
    shutil.rmtree(directory, ignore_errors=True)          # the earlier record of this name
    os.makedirs(directory, 0o700)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first == 0:                                        # first child: fork the supervisor, leave
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() == 0:
                _supervise(box, argv, directory, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(first, 0)
    # One line: OK, or the error. Not end of file: the container's first
    # process (spawn.py's relay, which never execs) holds the pipe open.
    word = b""
    while not word.endswith(b"\n") and (chunk := os.read(read_end, 4096)):
        word += chunk
    os.close(read_end)
    word = word.rstrip(b"\n")
    if word != b"OK":
        shutil.rmtree(directory, ignore_errors=True)
        code, _, message = word.decode(errors="replace").partition("\0")
        error = LabkitError(message or "the supervisor died before the container started",
                            "" if message else "run `labkit doctor`, then retry")
        error.exit_code = int(code) if code.isdigit() else 125
        raise error
    print(name)
    return 0


def _supervise(box: container.Container, argv: list[str], directory: str, report: int) -> NoReturn:
    """The supervisor: start the container with the log as its stdout/stderr, tell the
    labkit command it started (``report``), wait, release, record the exit status."""
    try:
        log = os.open(os.path.join(directory, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOCTTY, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((null, 0), (log, 1), (log, 2)):
            os.dup2(fd, target)
        os.close(log)
        os.close(null)
        me = os.getpid()
        _write_atomic(os.path.join(directory, "supervisor"), f"{me} {container.start_time(me)}\n")
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, _on_signal)
        try:
            proc = box.start(argv, capture=False)
        except LabkitError as e:
            os.write(report, f"{e.exit_code}\0{e}\n".encode())
            os._exit(e.exit_code)
        os.write(report, b"OK\n")
        os.close(report)
        try:
            proc.wait()
        finally:
            try:
                box.stop()                       # kill what still runs, reap, release every primitive
            finally:
                _write_atomic(os.path.join(directory, "status"), f"{exit_status(proc.returncode or 0)}\n")
    except SystemExit:                      # a signal: the container was stopped and released
        pass
    except BaseException as e:              # noqa: BLE001 - the supervisor has no one to raise to
        print(f"labkit: supervisor: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    os._exit(0)


def _on_signal(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)          # unwinds: stop the container, release, record


def _write_atomic(path: str, text: str) -> None:
    """Write a file so that a reader sees all of it or none (rename(2) is atomic)."""
    with open(path + ".new", "w") as f:
        f.write(text)
    os.rename(path + ".new", path)


# -- the record ----------------------------------------------------------------

def exit_code(name: str) -> int | None:
    """The recorded exit status, or None while the container runs."""
    try:
        with open(os.path.join(record(name), "status")) as f:
            return int(f.read())
    except FileNotFoundError:
        return None


def supervisor_pidfd(name: str) -> int | None:
    """A pidfd (pidfd_open(2)) for the supervisor of ``name``, or None when it has exited.
    Its start time is checked after opening, so a reused PID is not taken for it."""
    try:
        with open(os.path.join(record(name), "supervisor")) as f:
            pid, started = (int(x) for x in f.read().split())
        fd = os.pidfd_open(pid)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    try:
        if container.start_time(pid) == started:
            return fd
    except (FileNotFoundError, ProcessLookupError):
        pass
    os.close(fd)
    return None


def supervisor_alive(name: str) -> bool:
    """Whether the supervisor of ``name`` still runs (an exited one not yet reaped
    by its new parent is a zombie, whose pidfd is readable already)."""
    fd = supervisor_pidfd(name)
    if fd is None:
        return False
    try:
        return not wait_exited(fd, 0)
    finally:
        os.close(fd)


def wait_exited(fd: int, timeout: float | None) -> bool:
    """Wait until the process of pidfd ``fd`` has exited (the pidfd becomes
    readable, pidfd_open(2)); False if ``timeout`` seconds passed first."""
    return bool(select.select([fd], [], [], timeout)[0])


def _known(name: str) -> None:
    """Raise the one-line error for a name that has no record."""
    if os.path.isdir(record(name)):
        return
    if name in container.running():
        raise LabkitError(f"the container {name} was not started with -d: its output goes to the "
                          "terminal that ran it", "start it with labkit run -d --name NAME ...")
    raise LabkitError(f"no container named {name}", "see `labkit ps`; start one with labkit run -d --name NAME ...")


def _pid1(name: str) -> tuple[int, int]:
    """(host PID of PID 1, a pidfd for it) of the running container ``name``."""
    state = container.running().get(name)
    if state is None:
        if os.path.isdir(record(name)):
            raise LabkitError(f"the container {name} is not running (it exited)",
                              f"labkit wait {name} prints its exit status, labkit logs {name} its output")
        raise LabkitError(f"no running container named {name}", "see `labkit ps`")
    pid = int(state["pid"])
    fd = os.pidfd_open(pid)
    if container.start_time(pid) != state["start_time"]:
        os.close(fd)
        raise LabkitError(f"the container {name} is not running (it exited)", "see `labkit ps`")
    return pid, fd


# -- the commands ----------------------------------------------------------------

def wait(name: str) -> int:
    """`labkit wait NAME`: block until it exits; print its exit status (docker wait)."""
    _known(name)
    code = exit_code(name)
    if code is None:
        _until_recorded(name)
        code = exit_code(name)
    if code is None:
        raise LabkitError(f"the supervisor of {name} died without recording an exit status",
                          "`labkit cleanup` removes what it left")
    print(code)
    return 0


def logs(name: str, follow: bool = False) -> int:
    """`labkit logs NAME [-f]`: the output so far; with -f, then what comes until it exits."""
    _known(name)
    out = sys.stdout.buffer
    with open(os.path.join(record(name), "log"), "rb") as f:
        out.write(f.read())
        out.flush()
        if not follow:
            return 0
        fd = supervisor_pidfd(name)
        if fd is None:
            return 0
        try:
            while not wait_exited(fd, 0.1):
                out.write(f.read())
                out.flush()
        finally:
            os.close(fd)
        out.write(f.read())
        out.flush()
    return 0


def stop(name: str, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
    """`labkit stop NAME [-t SECONDS]`: SIGTERM to PID 1, SIGKILL after the timeout (docker stop)."""
    if timeout < 0:
        raise UsageError(f"-t {timeout} is not a duration", "give seconds, e.g. -t 10")
    pid, fd = _pid1(name)
    try:
        os.kill(pid, signal.SIGTERM)
        if not wait_exited(fd, timeout):
            os.kill(pid, signal.SIGKILL)      # from the host: delivered even to a PID 1 (pid_namespaces(7))
            wait_exited(fd, None)
    finally:
        os.close(fd)
    _until_recorded(name)
    print(name)
    return 0


def kill(name: str, sig: str = "KILL") -> int:
    """`labkit kill NAME [-s SIG]`: send SIG (a name, with or without SIG, or a number) to PID 1."""
    number = parse_signal(sig)
    pid, fd = _pid1(name)
    try:
        os.kill(pid, number)
    finally:
        os.close(fd)
    print(name)
    return 0


def remove(name: str, force: bool = False) -> int:
    """`labkit rm NAME [-f]`: remove the record of an exited container (-f: kill it first)."""
    _known(name)
    if name in container.running():
        if not force:
            raise LabkitError(f"the container {name} is running", f"labkit stop {name} first, or rm -f")
        pid, fd = _pid1(name)
        try:
            os.kill(pid, signal.SIGKILL)
            wait_exited(fd, None)
        finally:
            os.close(fd)
    _until_recorded(name)
    shutil.rmtree(record(name), ignore_errors=True)
    print(name)
    return 0


def _until_recorded(name: str) -> None:
    """Wait for the supervisor of ``name`` (if any) to release everything and exit."""
    fd = supervisor_pidfd(name)
    if fd is not None:
        try:
            wait_exited(fd, None)
        finally:
            os.close(fd)


def parse_signal(text: str) -> int:
    """A signal by number or by name, as docker kill -s takes it: 9, KILL, SIGKILL, kill."""
    if text.isdigit() and int(text) in {int(s) for s in signal.valid_signals()}:
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"unknown signal {text!r}", "give a name or number, e.g. -s TERM or -s 15") from None


# -- the CLI's words (cli.py adds them) ----------------------------------------

def add_commands(sub, parser_class) -> None:
    """The subcommands logs, stop, kill, wait and rm, on cli.py's subparsers ``sub``."""
    logs_cmd = sub.add_parser("logs", help="print the output of a detached container (run -d)")
    logs_cmd.add_argument("-f", "--follow", action="store_true", help="then follow it until the container exits")
    logs_cmd.add_argument("container", metavar="NAME")
    stop_cmd = sub.add_parser("stop", help="SIGTERM to a container's PID 1, SIGKILL after a timeout")
    stop_cmd.add_argument("-t", "--time", "--timeout", dest="time", type=float, default=DEFAULT_STOP_TIMEOUT,
                          metavar="SECONDS", help=f"seconds before SIGKILL (default {DEFAULT_STOP_TIMEOUT})")
    stop_cmd.add_argument("container", metavar="NAME")
    kill_cmd = sub.add_parser("kill", help="send a signal to a container's PID 1 (default KILL)")
    kill_cmd.add_argument("-s", "--signal", default="KILL", metavar="SIG",
                          help="the signal, by name or number (default KILL)")
    kill_cmd.add_argument("container", metavar="NAME")
    wait_cmd = sub.add_parser("wait", help="wait for a detached container to exit; print its exit status")
    wait_cmd.add_argument("container", metavar="NAME")
    rm_cmd = sub.add_parser("rm", help="remove the record (log, exit status) of an exited detached container")
    rm_cmd.add_argument("-f", "--force", action="store_true", help="kill it first if it still runs")
    rm_cmd.add_argument("container", metavar="NAME")


COMMANDS = {
    "logs": lambda args: logs(args.container, args.follow),
    "stop": lambda args: stop(args.container, args.time),
    "kill": lambda args: kill(args.container, args.signal),
    "wait": lambda args: wait(args.container),
    "rm": lambda args: remove(args.container, args.force),
}
