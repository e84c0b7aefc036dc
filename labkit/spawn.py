"""The one launch pipeline every labkit container starts through.

::

    parent                              child A                       child B = PID 1
    prepare() each primitive
    fork ─────────────────────────────▶ unshare(flags of all prims)
                                        write "U" ──┐
    join(pid_A) each primitive ◀────────────────────┘
    write "G" ────────────────────────▶ fork (only if CLONE_NEWPID) ──▶ enter() each primitive
                                        write "P<pid of B>"            execve(CMD)
                                        report B's wait status
    wait A; release() each primitive, on every path

Why two forks: unshare(CLONE_NEWPID) does not move the caller into the new PID
namespace; only the caller's next child is born there, as its PID 1
(pid_namespaces(7)). Why the parent waits for "U" before join(): a uid_map can
only be written, a veth only moved, once the child's namespaces exist
(user_namespaces(7), network_namespaces(7)). When no primitive has a join(),
there is nothing to wait for: child A goes on without "U" and "G". Both forks
skip CPython's at-fork work when the forking process has one thread, as child
A always has (kernel.fork; benchmarks/container_startup.py measures the run).

Between fork and execve the child only makes syscalls through labkit.kernel
and os: no imports, no locks, no logging, since the parent (a notebook kernel)
may be multi-threaded and a lock held by another thread at fork time is never
released in the child. A failed step is written to the status pipe as
``E<step>\\0<errno>\\0<message>`` and raised in the parent as a LabkitError.
The status pipe is close-on-exec: when the parent reads end-of-file, the
command has been executed. Child A writes B's PID, and later B's wait status,
to a second pipe, the relay pipe, so the parent wakes once, at end-of-file.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import warnings  # noqa: F401 - os.execvpe imports it lazily (os.get_exec_path), in the child
from typing import IO, Iterable, NamedTuple, Sequence

from . import kernel
from .errors import (CommandNotExecutableError, CommandNotFoundError,
                     KernelError, LabkitError, UsageError)

DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "TERM": os.environ.get("TERM", "xterm"),
}


# How a child, between fork and execve, tells that its parent still lives
# (die_with_parent); set in the child itself, right after the fork.
_parent_pid = 0          # child A: the PID of the process that forked it
_lifeline = -1           # child B: the read end of a pipe whose only write end child A holds


def die_with_parent() -> None:
    """Ask for SIGKILL when the parent dies, then make sure it has not already.

    prctl(2) PR_SET_PDEATHSIG: the kernel sends the signal when the parent
    thread dies *after* the call; a parent that died between fork and the call
    is missed, so the child checks once the signal is armed, as runc does, and
    exits at once if its parent is gone. Child A compares getppid() with the
    PID of the process that forked it (an orphan gets a new parent). Child B's
    parent, child A, is outside B's PID namespace when B has a new one, where
    getppid() returns 0 (pid_namespaces(7)): B reads its lifeline pipe instead,
    end-of-file once child A, the only writer, is gone.

    The kernel clears the setting when the process's credentials change
    (kernel/cred.c commit_creds(): a new effective or filesystem UID or GID, or
    capabilities that are not a subset of the old ones; prctl(2)): a hook that
    changes them calls this again.
    """
    kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
    if _lifeline >= 0:
        try:
            gone = os.read(_lifeline, 1) == b""
        except BlockingIOError:             # empty but open: child A still holds the write end
            gone = False
    else:
        gone = os.getppid() != _parent_pid
    if gone:
        os._exit(128 + signal.SIGKILL)      # as the signal would have ended it



def exit_status(returncode: int) -> int:
    """A subprocess-style return code (-N: killed by signal N) as the shell's
    exit status: 128+N for signal N, as sh(1) and docker report it."""
    return 128 - returncode if returncode < 0 else returncode

class Primitive:
    """One isolation primitive: the namespaces it needs and its five hooks.

    ``flags`` are the CLONE_NEW* bits child A passes to unshare(2). The hooks
    run in the order the primitives are given; ``release()`` in reverse order.

    - ``prepare()``: in the parent, before fork (create what must exist first).
    - ``setns()``: in child A, right after its unshare(2): join namespaces that
      exist already (setns(2), what ``labkit exec`` does). A joined PID
      namespace applies to children only, so a primitive that joins one sets
      ``joins_pid_namespace`` and child A forks PID 1's sibling as child B.
    - ``join(pid)``: in the parent, once child A has unshared (write its maps,
      move a link into its network namespace, put it in a cgroup).
    - ``enter()``: in the child about to execve (only syscalls, see module doc).
    - ``release()``: in the parent, after the container exited, on every path,
      also when an earlier hook (its own prepare() included) failed or never
      ran. It must be safe to call twice.
    """

    name = "primitive"
    flags = 0
    joins_pid_namespace = False

    def prepare(self) -> None:
        pass

    def setns(self) -> None:
        pass

    def join(self, pid: int) -> None:
        pass

    def enter(self) -> None:
        pass

    def release(self) -> None:
        pass


class Result(NamedTuple):
    """What a finished container left: its exit status and its output."""

    returncode: int
    stdout: str
    stderr: str


class Process:
    """A running container: its init process, its namespaces, its release.

    ``pid`` is the host PID of the command (PID 1 inside when a PID namespace
    was made). ``returncode`` follows subprocess: the exit status, or -N when
    a signal N ended it. Use it as a context manager: on leaving the block the
    command is killed if still running, reaped, and every primitive released.
    """

    def __init__(self, argv: Sequence[str], primitives: list[Primitive], pid_a: int,
                 pid: int, relay: "_Lines", stdout: IO[bytes] | None,
                 stderr: IO[bytes] | None) -> None:
        self.argv = list(argv)
        self.primitives = primitives
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = ""
        self.stderr = ""
        self._pid_a = pid_a
        self._relay = relay
        self._out, self._err = stdout, stderr
        self._released = False

    def namespaces(self) -> dict[str, int]:
        """Inode of each of the container's namespaces, from /proc/PID/ns/."""
        return {ns: kernel.ns_inode(self.pid, ns) for ns in kernel.NAMESPACES}

    def cgroup(self) -> str:
        """The container's line(s) of /proc/PID/cgroup (hierarchy:controllers:path)."""
        with open(f"/proc/{self.pid}/cgroup") as f:
            return f.read()

    def output_so_far(self) -> str:
        """What the container has written to its stdout until now (when captured)."""
        if self._out is None or self._out.closed:
            return self.stdout
        return os.pread(self._out.fileno(), 1 << 20, 0).decode(errors="replace")

    def poll(self) -> int | None:
        """The return code if the container has exited, else None."""
        return self.wait(timeout=0) if self.returncode is None else self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the container to exit; None if ``timeout`` seconds passed first."""
        if self.returncode is not None:
            return self.returncode
        if timeout is not None:
            pidfd = os.pidfd_open(self._pid_a)
            try:
                if not select.select([pidfd], [], [], timeout)[0]:
                    return None
            finally:
                os.close(pidfd)
        _, status = os.waitpid(self._pid_a, 0)
        reported = self._relay.rest()             # B's status, relayed by A
        os.close(self._relay.fd)
        if reported:
            status = int(reported)
        self.returncode = os.waitstatus_to_exitcode(status)
        self.stdout, self.stderr = _drain(self._out), _drain(self._err)
        return self.returncode

    def finish(self, timeout: float | None = None) -> "Result":
        """Wait for the container to exit and return its status and output; if
        ``timeout`` seconds pass first, kill it, reap it and raise LabkitError."""
        if self.wait(timeout) is None:
            self.kill()
            self.wait()
            raise LabkitError(f"{self.argv[0]} did not exit within {timeout} s",
                              "it was killed; give it more time or check it does not wait for input")
        return Result(self.returncode or 0, self.stdout, self.stderr)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the container's init (from the host's PID namespace,
        so SIGKILL reaches even a PID 1, see pid_namespaces(7))."""
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def release(self) -> None:
        """Release every primitive, in reverse order; raise the first failure."""
        if self._released:
            return
        self._released = True
        _release(self.primitives)

    def close(self) -> None:
        """Kill the container if it still runs, reap it, release every primitive."""
        try:
            if self.returncode is None:
                self.kill()
                self.wait()
        finally:
            self.release()

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn(argv: Sequence[str], primitives: Iterable[Primitive] = (), *,
          env: dict[str, str] | None = None, capture: bool = True,
          stdio: tuple[int, int, int] | None = None) -> Process:
    """Start ``argv`` in new namespaces made by ``primitives``; return once it runs.

    With ``capture`` the command's stdin is /dev/null and its stdout/stderr are
    kept for ``Process.stdout``/``stderr``; without, it shares the caller's, or
    uses the descriptors ``stdio`` (stdin, stdout, stderr: a pty's slave side).
    Raises LabkitError (nothing left behind) when a step fails.
    """
    if not argv:
        raise UsageError("no command given", "name the command to run, e.g. -- /bin/sh -c 'echo hi'")
    prims = list(primitives)
    kernel.resolve_syscall_numbers()       # in the parent: the child must not load libseccomp
    try:
        for p in prims:
            p.prepare()
        return _launch(list(argv), prims, dict(env or DEFAULT_ENV), capture, stdio)
    except BaseException:
        _release(prims)     # all of them: a failed prepare() may have half-made its object
        raise


def run(argv: Sequence[str], primitives: Iterable[Primitive] = (), *,
        env: dict[str, str] | None = None, timeout: float | None = None) -> Result:
    """Run ``argv`` to completion in new namespaces; return status and output."""
    with spawn(argv, primitives, env=env) as proc:
        return proc.finish(timeout)


def _launch(argv: list[str], prims: list[Primitive], env: dict[str, str],
            capture: bool, given: tuple[int, int, int] | None = None) -> Process:
    flags = 0
    fork_b = False
    for p in prims:
        flags |= p.flags
        fork_b |= p.joins_pid_namespace
    # Child A waits for "G" only when a primitive has work for join().
    joins = [p for p in prims if type(p).join is not Primitive.join]
    status_r, status_w = os.pipe2(os.O_CLOEXEC)   # children -> parent; EOF = exec'd
    go_r, go_w = os.pipe2(os.O_CLOEXEC)           # parent -> child A: "G"
    relay_r, relay_w = os.pipe2(os.O_CLOEXEC)     # child A -> parent: "P<pid>", B's wait status
    out = _memory_file("labkit-stdout") if capture else None
    err = _memory_file("labkit-stderr") if capture else None
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) if capture else 0
    stdio = (stdin, out.fileno() if out else 1, err.fileno() if err else 2)
    if given is not None and not capture:
        stdio = given

    parent = os.getpid()
    pid_a = kernel.fork()
    if pid_a == 0:
        global _parent_pid
        _parent_pid = parent
        _child_a(argv, prims, env, flags, fork_b, bool(joins), stdio, status_w, go_r, relay_w)
    for fd in (status_w, go_r, relay_w) + ((stdin,) if capture else ()):
        os.close(fd)

    lines = _Lines(status_r)
    try:
        if joins:
            _expect(lines.next(), b"U", argv[0])
            for p in joins:
                p.join(pid_a)
            os.write(go_w, b"G")
        _expect(lines.next(), None, argv[0])       # end of file: execve succeeded
        relay = _Lines(relay_r)
        pid = int(_expect(relay.next(), b"P", argv[0]))
    except BaseException:
        os.close(go_w)                             # child A reads EOF and gives up
        _kill_and_reap(pid_a)
        os.close(relay_r)
        raise
    finally:
        os.close(status_r)
    os.close(go_w)
    return Process(argv, prims, pid_a, pid, relay, out, err)


def _child_a(argv: list[str], prims: list[Primitive], env: dict[str, str], flags: int,
             fork_b: bool, wait_for_joins: bool, stdio: tuple[int, int, int], status_w: int,
             go_r: int, relay_w: int) -> None:
    """Child A: unshare (or setns), wait for the parent's joins, then become or fork PID 1."""
    global _lifeline
    step = "prctl(PR_SET_PDEATHSIG)"
    try:
        die_with_parent()
        step = "unshare"
        kernel.unshare(flags)
        for p in prims:
            step = f"{p.name}: setns"
            p.setns()
        if wait_for_joins:
            os.write(status_w, b"U\n")
            if os.read(go_r, 1) != b"G":
                os._exit(125)                       # the parent gave up
        if not (flags & kernel.CLONE_NEWPID or fork_b):
            os.write(relay_w, b"P%d\n" % os.getpid())
            _exec_child(argv, prims, env, stdio, status_w)
        step = "pipe2"
        life_r, life_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)   # B's lifeline (die_with_parent)
        step = "fork"
        pid_b = kernel.fork_single_threaded()     # a fork's child: one thread (kernel.fork)
        if pid_b == 0:
            step = "prctl(PR_SET_PDEATHSIG)"
            os.close(life_w)
            _lifeline = life_r
            die_with_parent()
            _exec_child(argv, prims, env, stdio, status_w)
        os.close(life_r)                          # A keeps life_w open until it exits
        # A stays only to relay B's status; the terminal's ^C is for B, not us.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGQUIT,
                                                  signal.SIGTERM, signal.SIGHUP})
        os.write(relay_w, b"P%d\n" % pid_b)       # before the parent can see EOF on status
        os.close(status_w)
        _, status = os.waitpid(pid_b, 0)
        os.write(relay_w, b"%d" % status)
        os._exit(0)
    except OSError as e:
        _report(status_w, step, e)
    except BaseException as e:                      # a bug in a hook: still say which step
        _report(status_w, step, OSError(0, f"{type(e).__name__}: {e}"))
    os._exit(125)


def _exec_child(argv: list[str], prims: list[Primitive], env: dict[str, str],
                stdio: tuple[int, int, int], status_w: int) -> None:
    """The container's init: stdio, enter() each primitive, execve. Never returns.

    Everything it runs must be imported already: after pivot_root the host's
    standard library is out of reach, and a lazy import fails (ModuleNotFoundError).
    os.execvpe is one: it imports warnings, which this module therefore imports."""
    step = "dup2"
    try:
        for target, fd in enumerate(stdio):
            if fd != target:
                os.dup2(fd, target)
        # Python ignores SIGPIPE and the parent may block signals: an exec'd
        # program expects default dispositions and an empty signal mask.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for p in prims:
            step = f"{p.name}: enter"
            p.enter()
        step = "execve"
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        _report(status_w, step, e)
    except BaseException as e:                      # a bug in a hook: still say which step
        _report(status_w, step, OSError(0, f"{type(e).__name__}: {e}"))
    os._exit(125)


def _report(status_w: int, step: str, e: OSError) -> None:
    """Send a failed step to the parent: E<step>\\0<errno>\\0<message>."""
    message = e.strerror or ""
    os.write(status_w, b"E%s\0%d\0%s\n" % (step.encode(), e.errno or 0, message.encode()))


class _Lines:
    """Read newline-terminated messages from a pipe; b"" at end of file."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, b""

    def next(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def rest(self) -> bytes:
        """Everything until end of file."""
        data, self.buf = self.buf, b""
        while chunk := os.read(self.fd, 4096):
            data += chunk
        return data


def _expect(line: bytes, tag: bytes | None, command: str) -> str:
    """Return the message's body if it has ``tag``; raise the child's error."""
    if line.startswith(b"E"):
        step, err, message = line[1:].decode(errors="replace").split("\0", 2)
        raise _error_for(step, int(err), message, command)
    if tag is None and not line:
        return ""
    if tag is not None and line.startswith(tag):
        return line[len(tag):].decode()
    raise LabkitError("the container's first process died during setup",
                      "run `labkit doctor`, then retry")


def _error_for(step: str, err: int, message: str, command: str) -> LabkitError:
    """The LabkitError for a failed step; execve failures get 126/127."""
    if step == "execve" and err == errno.ENOENT:
        return CommandNotFoundError(f"{command}: command not found in the container",
                                    "check its name, and that it exists in the container's PATH")
    if step == "execve":
        return CommandNotExecutableError(f"{command}: cannot be executed: {message}",
                                         "check that it is a program with execute permission")
    return KernelError(step, err, message)


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _memory_file(name: str) -> IO[bytes]:
    """An anonymous file in memory (memfd_create(2)) to hold captured output."""
    return os.fdopen(os.memfd_create(name, os.MFD_CLOEXEC), "w+b")


def _drain(f: IO[bytes] | None) -> str:
    if f is None:
        return ""
    f.seek(0)
    text = f.read().decode(errors="replace")
    f.close()
    return text


def _release(prims: list[Primitive]) -> None:
    """Call release() on each primitive in reverse order; re-raise the first error."""
    first: BaseException | None = None
    for p in reversed(prims):
        try:
            p.release()
        except BaseException as e:  # every release must run, even after one failed
            first = first or e
    if first is not None:
        raise first
