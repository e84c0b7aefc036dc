"""Joining a running container: setns(2) into its namespaces, as ``docker exec`` does.

setns(2): a process joins an existing namespace through an open
``/proc/PID/ns/TYPE`` file. The order matters:

- the user namespace first: the other namespaces belong to it, and setns(2)
  into them needs CAP_SYS_ADMIN *in it*, which joining it gives;
- a PID namespace joined applies only to the caller's children (pid_namespaces(7)):
  the caller forks, and the child is the one inside (spawn.py's child B);
- a mount namespace joined sets the caller's root and working directory to the
  namespace's root mount; the container's own root is its pivot_root, so the
  caller then chroot(2)s into /proc/PID/root, opened before the join, as
  nsenter(1) does.

The process also joins the container's cgroups: the parent opens the file
that joins each (cgroups.open_self_move) and the new process writes "0" to
them (it moves itself), so it counts against the same limits.
"""

from __future__ import annotations

import os

from . import kernel
from .cgroups import layout, open_self_move
from .errors import LabkitError
from .spawn import Primitive, die_with_parent

# /proc/PID/ns names in the order to join them (user first, mount last).
JOIN_ORDER = ("user", "cgroup", "ipc", "uts", "net", "pid", "mnt")


def cgroup_dirs(pid: int) -> list[str]:
    """The host directories of the labkit cgroups process ``pid`` is in, one per
    hierarchy: its /proc/PID/cgroup lines, resolved by cgroups.layout (read in
    the host's cgroup namespace), those below ``labkit/`` kept."""
    where = layout.read()
    return [d for h, d in where.dirs_of(pid) if where.is_labkit(h, d)]


class JoinNamespaces(Primitive):
    """Join every namespace of host process ``pid`` that differs from ours, and its cgroups."""

    name = "nsenter"
    joins_pid_namespace = True

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fds: list[int] = []
        self.root_fd: int | None = None
        self.procs_fds: list[int] = []
        self.user = False

    def prepare(self) -> None:
        try:
            for ns in JOIN_ORDER:
                if kernel.ns_inode(self.pid, ns) != kernel.ns_inode("self", ns):
                    self.fds.append(os.open(f"/proc/{self.pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC))
                    self.user |= ns == "user"
            self.root_fd = os.open(f"/proc/{self.pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            for d in cgroup_dirs(self.pid):
                self.procs_fds.append(open_self_move(d))
        except (FileNotFoundError, ProcessLookupError):
            self.release()
            raise LabkitError(f"the container (host PID {self.pid}) is not running", "see labkit ps") from None
        except BaseException:
            self.release()
            raise

    def setns(self) -> None:
        """In child A: join each namespace, then make the container's root ours."""
        for fd in self.fds:
            kernel.setns(fd, 0)
        os.fchdir(self.root_fd)
        os.chroot(".")
        os.chdir("/")

    def enter(self) -> None:
        """In child B (inside the joined PID namespace): its cgroups, then root inside."""
        for fd in self.procs_fds:
            os.write(fd, b"0")
        if self.user:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            # The new UID cleared the parent-death signal (kernel/cred.c commit_creds(),
            # prctl(2) PR_SET_PDEATHSIG): arm it again, and check the parent.
            die_with_parent()

    def release(self) -> None:
        for fd in self.fds + self.procs_fds + ([self.root_fd] if self.root_fd is not None else []):
            os.close(fd)
        self.fds, self.procs_fds, self.root_fd = [], [], None
