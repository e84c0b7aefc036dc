"""PID namespace: the container's processes get their own numbers, from 1.

pid_namespaces(7): the first process created in a new PID namespace gets PID 1
there and is its "init": orphans inside are re-parented to it, and when it
dies the kernel sends SIGKILL to every other process of the namespace. A
process has one PID in its own namespace and in each ancestor namespace; the
``NSpid`` line of /proc/PID/status lists them, outermost first. A process can
only see and signal processes of its own namespace and of namespaces below it.

/proc shows the PID namespace of the procfs instance, not of the reader, so a
container needs its own /proc mounted (in its own mount namespace, so the
host's /proc is untouched): the same thing ``unshare --pid --fork --mount-proc`` does.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from . import kernel
from .spawn import Primitive


class PidNamespace(Primitive):
    """A new PID namespace; with ``mount_proc``, a private /proc that shows it."""

    name = "pid"

    def __init__(self, mount_proc: bool = True) -> None:
        self.mount_proc = mount_proc
        # Mounting /proc needs a mount namespace of our own (mount_namespaces(7)).
        self.flags = kernel.CLONE_NEWPID | (kernel.CLONE_NEWNS if mount_proc else 0)

    def enter(self) -> None:
        if self.mount_proc:
            # Stop our mounts propagating back to the host's namespace first.
            kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
            kernel.mount("proc", "/proc", "proc",
                         kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)


def nspid(pid: int) -> list[int]:
    """The PIDs of host process ``pid`` in each PID namespace, outermost first
    (the ``NSpid`` line of /proc/PID/status, see proc(5))."""
    line = kernel.proc_status(pid).get("NSpid")
    if line is None:
        raise LookupError(f"no NSpid line for PID {pid}")
    return [int(n) for n in line.split()]


class ProcessEntry(NamedTuple):
    """One process as both sides number it."""

    host_pid: int
    container_pid: int
    host_ppid: int
    command: str
    state: str          # R running, S sleeping, Z zombie (exited, not yet reaped) ... proc(5)


def processes_in(pid_ns_inode: int) -> list[ProcessEntry]:
    """Every process whose PID namespace is ``pid_ns_inode``, seen from the host."""
    entries = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if kernel.ns_inode(name, "pid") != pid_ns_inode:
                continue
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            ids = nspid(int(name))
        except (FileNotFoundError, ProcessLookupError, LookupError):
            continue                            # it exited while we looked
        except PermissionError:
            continue                            # not ours to inspect (ptrace access mode)
        command = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        entries.append(ProcessEntry(int(name), ids[-1], int(ppid), command, state))
    return sorted(entries, key=lambda e: e.container_pid)
