"""IPC namespace: the container's own System V IPC objects and POSIX message queues.

ipc_namespaces(7): System V message queues, semaphore sets and shared memory
segments, and POSIX message queues, exist in one IPC namespace and are
invisible from every other; they are destroyed with the namespace.
/proc/sysvipc/msg lists the message queues of the reader's IPC namespace.
"""

from __future__ import annotations

from . import kernel
from .spawn import Primitive


class IpcNamespace(Primitive):
    """A new IPC namespace: it starts with no IPC objects at all."""

    name = "ipc"
    flags = kernel.CLONE_NEWIPC


def message_queues(path: str = "/proc/sysvipc/msg") -> list[dict[str, int]]:
    """The System V message queues of the caller's IPC namespace (key, msqid)."""
    with open(path) as f:
        rows = f.read().splitlines()[1:]
    return [{"key": int(r.split()[0]), "msqid": int(r.split()[1])} for r in rows]


def create_queue(key: int, mode: int = 0o600) -> int:
    """Create a new System V message queue with ``key``; return its id."""
    return kernel.msgget(key, kernel.IPC_CREAT | kernel.IPC_EXCL | mode)


def remove_queue(msqid: int) -> None:
    """Remove the message queue ``msqid``."""
    kernel.msgctl_rmid(msqid)
