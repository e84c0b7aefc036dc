"""Cgroup namespace: the container sees its own cgroup as the root "/".

cgroup_namespaces(7): a cgroup namespace virtualises the view of a process's
cgroups (/proc/PID/cgroup and /proc/PID/mountinfo). Its root, in every
hierarchy, is the cgroup the process is in *at the moment it unshares*; paths
outside it are shown relative to it ("/.." upward). So the unshare must come
after the process has moved into its container cgroup: it is made by PID 1
itself, in enter(), after the cgroup primitive's enter() moved it there, and
not by child A with the other namespaces (child A stays outside the cgroup).
Inside, /proc/self/cgroup then reads ``0::/`` (cgroup v2) and
``N:memory:/`` ... (each cgroup v1 hierarchy).
"""

from __future__ import annotations

from . import kernel
from .spawn import Primitive


class CgroupNamespace(Primitive):
    """A new cgroup namespace rooted at the cgroup PID 1 is in when enter() runs.

    Place it after the cgroup primitive and before the mount primitive (a
    cgroup filesystem mounted in the container then shows the namespace's root).
    """

    name = "cgroupns"
    flags = 0            # not child A's unshare: see the module docstring

    def enter(self) -> None:
        kernel.unshare(kernel.CLONE_NEWCGROUP)


def cgroup_lines(pid: int | str = "self") -> list[str]:
    """The lines of /proc/PID/cgroup (hierarchy-ID:controllers:path), as the reader's
    cgroup namespace shows them."""
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read().splitlines()
