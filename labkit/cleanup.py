"""`labkit cleanup`: find and remove every kernel object labkit left behind.

Everything labkit creates carries its name (DESIGN.md): mounts under
/run/labkit, network namespaces ``labkit-*`` bound under /run/netns, links
``lk*`` and ``labkit0``, cgroups under a ``labkit/`` parent in each hierarchy
(v1 and v2, wherever cgroups.layout finds them mounted),
tracefs instances ``labkit-*``, loop devices backed by /var/lib/labkit/loop/labkit-*, the state of
named containers under /run/labkit/containers (removed with /run/labkit). After a crash, a ``kill -9`` or a notebook
kernel restart, this removes them; each function returns what it removed.
"""

from __future__ import annotations

import os
import shutil

from . import kernel, mountinfo
from .cgroups import layout, v2
from .cgroups.v1 import kill_procs

RUN_DIR = "/run/labkit"
NETNS_DIR = "/run/netns"


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix``, deepest first (the order to unmount)."""
    return mountinfo.under(mountinfo.read(), prefix)


def remove_mounts() -> list[str]:
    """Unmount everything under /run/labkit and remove the directory tree
    (with the overlay upper/work directories of containers, see mount.py)."""
    removed = []
    for point in mounts_under(RUN_DIR):
        kernel.umount2(point, kernel.MNT_DETACH)
        removed.append(f"mount {point}")
    if os.path.isdir(RUN_DIR):
        # rmtree unlinks symbolic links (an upper layer may hold some) instead of following them.
        shutil.rmtree(RUN_DIR)
        removed.append(f"directory {RUN_DIR}")
    return removed


def remove_netns() -> list[str]:
    """Unbind and remove named network namespaces labkit-* (ip-netns(8) layout)."""
    removed = []
    if os.path.isdir(NETNS_DIR):
        for name in sorted(os.listdir(NETNS_DIR)):
            if name.startswith("labkit-"):
                path = os.path.join(NETNS_DIR, name)
                if mounts_under(path):
                    kernel.umount2(path, kernel.MNT_DETACH)
                os.unlink(path)
                removed.append(f"netns {name}")
    return removed


def labkit_cgroups() -> list[str]:
    """Every cgroup directory at or below labkit/, in every hierarchy, v1 and v2
    wherever it is mounted (cgroups.layout), deepest first."""
    return layout.read().labkit_groups()


def remove_cgroups() -> list[str]:
    """Kill the processes in labkit cgroups, then rmdir the groups bottom-up.

    cgroups(7): a cgroup can be removed (rmdir) only when it has no processes
    and no child groups. A v2 group is emptied with cgroup.kill (and, on a
    kernel before 5.14, v1's SIGKILL loop: cgroups.v2.kill); a v1 group has
    no cgroup.kill and gets the loop. Deepest first, so each group's children
    are gone before it.
    """
    removed = []
    for group in labkit_cgroups():
        if os.path.exists(os.path.join(group, "cgroup.events")):      # v2 (not a v1 group)
            v2.kill(group, timeout=1.0)
        else:
            kill_procs([group], timeout=1.0)
        if v2.rmdir(group):
            removed.append(f"cgroup {group}")
    return removed


def _tracefs() -> str | None:
    """tracefs as labkit reaches it (trace.tracefs: the host's mount, else one only
    this process sees), or None on a kernel without it. Every mount of tracefs
    shows the same instances and kprobe events (one superblock), so what a
    crashed trace left is found even where the host has tracefs mounted nowhere."""
    from .errors import LabkitError
    from .trace import tracefs

    try:
        return tracefs()
    except LabkitError:
        return None


def remove_trace_instances() -> list[str]:
    """Remove tracefs instances labkit-* (rmdir removes an instance, see ftrace docs)."""
    removed = []
    root = _tracefs()
    if root and os.path.isdir(f"{root}/instances"):
        for name in sorted(os.listdir(f"{root}/instances")):
            if name.startswith("labkit-"):
                os.rmdir(f"{root}/instances/{name}")
                removed.append(f"tracefs instance {name}")
    return removed


def remove_kprobes() -> list[str]:
    """Remove kprobe events of groups labkit_* (the cap_capable fallback of trace.py):
    writing ``-:GROUP/EVENT`` to kprobe_events deletes one (kprobetrace.rst). The
    file is opened O_APPEND, without the seek to its end that open(path, "a")
    does: the kernel refuses that seek with EINVAL (seq_lseek, fs/seq_file.c)."""
    removed = []
    root = _tracefs()
    path = f"{root}/kprobe_events"
    if root and os.path.exists(path):
        with open(path) as f:
            names = [line.split()[0].split(":", 1)[1] for line in f if line.strip()]
        for name in names:
            if name.startswith("labkit_"):
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                try:
                    os.write(fd, f"-:{name}\n".encode())
                finally:
                    os.close(fd)
                removed.append(f"kprobe event {name}")
    return removed


def remove_links() -> list[str]:
    """Delete links named lk* and the bridge labkit0 (through netlink, pyroute2)."""
    from pyroute2 import IPRoute  # imported here: only cleanup needs netlink

    removed = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name == "labkit0" or name.startswith("lk"):
                ipr.link("del", index=link["index"])
                removed.append(f"link {name}")
    return removed


def remove_loop_devices() -> list[str]:
    """Detach loop devices whose backing file is labkit's (loopdev.py), delete the files."""
    from .loopdev import remove_leftovers

    return remove_leftovers()


STEPS = (remove_cgroups, remove_trace_instances, remove_kprobes, remove_mounts, remove_loop_devices, remove_netns,
         remove_links)


def cleanup() -> list[str]:
    """Run every step; return a line for each object removed."""
    removed: list[str] = []
    for step in STEPS:
        removed += step()
    return removed
