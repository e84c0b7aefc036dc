"""--init: a minimal init as the container's PID 1 (what `docker run --init` gives).

The kernel's rules for a PID namespace's init, pid_namespaces(7), "The
namespace init process":

- PID 1 is marked SIGNAL_UNKILLABLE (kernel/fork.c, copy_process()), and
  sig_task_ignored() in kernel/signal.c drops every signal whose handler is
  still SIG_DFL, from inside the namespace and from the host alike; only
  SIGKILL and SIGSTOP from an ancestor namespace are forced through. A shell
  or a server run as PID 1 installs no SIGTERM handler, so `kill -TERM` of it
  does nothing.
- An orphan inside the namespace is re-parented to PID 1 (kernel/exit.c,
  find_child_reaper()), and stays a zombie until PID 1 waits for it.
- When PID 1 exits, the kernel kills every other process of the namespace
  (kernel/pid_namespace.c, zap_pid_ns_processes()).

This init is labkit's own code: the busybox root filesystem has no Python, but
PID 1 already runs Python (the forked labkit) when it finishes its setup. As the
last step of that setup, after the capabilities, no_new_privs and the seccomp
filter, PID 1 forks: the child goes on to execve the command, so the command
gets exactly the credentials, filter and namespaces it gets without --init (all
of them are inherited across fork(2) and kept across execve(2) as they would
be for PID 1 itself). PID 1 stays behind as the loop of ``serve()``:

- it blocks every signal and takes them with sigwaitinfo(2). A blocked signal
  is never ignored, whatever its handler (kernel/signal.c, sig_ignored():
  "Blocked signals are never ignored, since the signal handler may change by
  the time it is unblocked"), so SIGTERM from the host is queued for PID 1 and
  not dropped by the SIGNAL_UNKILLABLE rule;
- every signal it takes, other than SIGCHLD, it sends on to the command with
  kill(2). The command is not PID 1, so the default actions apply to it;
- on SIGCHLD it reaps every child that has exited (waitpid(-1, WNOHANG)):
  the command, and the orphans the kernel re-parented to it;
- when the command has exited, it exits with the command's status (128+N when
  signal N ended it, as a shell reports it); the kernel then kills whatever is
  left in the namespace.

The command's child processes are not signalled by PID 1 (only the command,
as Docker's init does by default). With -t, the command stays in PID 1's
process group: a ^C of the terminal reaches both, and the command then gets
SIGINT twice (once from the terminal, once forwarded). A parent death signal does not pass to a
fork's child (prctl(2), PR_SET_PDEATHSIG), and the command needs none: if
PID 1 dies, the kernel kills the namespace.
"""

from __future__ import annotations

import ctypes
import os
import signal

from . import kernel
from .spawn import Primitive, exit_status

COMM = b"labkit-init"              # at most 15 bytes (TASK_COMM_LEN, include/linux/sched.h)

# Every signal a process can take: SIGKILL and SIGSTOP cannot be blocked (signal(7)).
FORWARDED = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


class Init(Primitive):
    """The last primitive of a container with --init: PID 1 forks the command and stays as its init."""

    name = "init"

    def __init__(self) -> None:
        self._comm = ctypes.create_string_buffer(COMM)     # made here: PID 1 only makes syscalls

    def enter(self) -> None:
        """In PID 1, after every other primitive: fork; the child returns (to execve the
        command), PID 1 never returns (it serves as init until the command exits)."""
        # Blocked before the fork, so a signal sent to PID 1 at once is queued, not lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        command = kernel.fork_single_threaded()   # PID 1 has one thread (kernel.fork)
        if command == 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, set())     # the command: an empty mask
            return
        kernel.prctl(kernel.PR_SET_NAME, ctypes.addressof(self._comm))   # ps shows labkit-init, not python
        serve(command)


def serve(command: int) -> None:
    """PID 1's loop: forward signals to ``command``, reap every child, exit with the
    command's status. Only calls into os and signal (the root filesystem has no Python)."""
    # The descriptors PID 1 holds from setup (the status pipe among them) must
    # close, so that the launcher sees end-of-file once the command has execve'd.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    while True:
        info = signal.sigwaitinfo(FORWARDED)
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(command, info.si_signo)
            except ProcessLookupError:          # exited; its SIGCHLD is on its way
                pass
            continue
        while True:                             # SIGCHLD: one pending signal may stand for many children
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                os._exit(0)                     # unreachable: the command is our child until reaped
            if pid == 0:
                break
            if pid == command:
                os._exit(exit_status(os.waitstatus_to_exitcode(status)))
