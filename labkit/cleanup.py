"""`labkit cleanup`: find and remove every kernel object labkit left behind.

Everything labkit creates carries its name (DESIGN.md), and only names made
exactly as labkit makes them are removed: mounts under /run/labkit, network
namespaces ``labkit-10.88.X.Y`` bound under /run/netns and links ``labkit0``
and ``lk-X-Y``/``lk-X-Yc`` (net.is_labkit_netns, net.is_labkit_link: an
``lkfoo`` of someone else's stays), cgroups under a ``labkit/`` parent in each
hierarchy (v1 and v2, wherever cgroups.layout finds them mounted), tracefs
instances ``labkit-PID-N`` and kprobe groups ``labkit_PID_N``
(trace.INSTANCE_NAME, trace.KPROBE_GROUP), loop devices backed by
/var/lib/labkit/loop/labkit-*, the state of named containers under
/run/labkit/containers (removed with /run/labkit). After a crash, a ``kill -9``
or a notebook kernel restart, this removes them; each function returns what it
removed, or with ``dry_run`` what it would remove, removing nothing.
"""

from __future__ import annotations

import errno
import os
import shutil

from . import kernel, mountinfo
from .cgroups import layout, v2
from .cgroups.v1 import kill_procs
from .net import is_labkit_link, is_labkit_netns

RUN_DIR = "/run/labkit"
NETNS_DIR = "/run/netns"


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix``, deepest first (the order to unmount)."""
    return mountinfo.under(mountinfo.read(), prefix)


def remove_mounts(dry_run: bool = False) -> list[str]:
    """Unmount everything under /run/labkit and remove the directory tree
    (with the overlay upper/work directories of containers, see mount.py)."""
    removed = []
    for point in mounts_under(RUN_DIR):
        if not dry_run:
            kernel.umount2(point, kernel.MNT_DETACH)
        removed.append(f"mount {point}")
    if os.path.isdir(RUN_DIR):
        if not dry_run:
            # rmtree unlinks symbolic links (an upper layer may hold some) instead of following them.
            shutil.rmtree(RUN_DIR)
        removed.append(f"directory {RUN_DIR}")
    return removed


def remove_netns(dry_run: bool = False) -> list[str]:
    """Unbind and remove the named network namespaces labkit-10.88.X.Y (ip-netns(8) layout)."""
    removed = []
    if os.path.isdir(NETNS_DIR):
        for name in sorted(os.listdir(NETNS_DIR)):
            if is_labkit_netns(name):
                path = os.path.join(NETNS_DIR, name)
                if not dry_run:
                    if mounts_under(path):
                        kernel.umount2(path, kernel.MNT_DETACH)
                    os.unlink(path)
                removed.append(f"netns {name}")
    return removed


def labkit_cgroups() -> list[str]:
    """Every cgroup directory at or below labkit/, in every hierarchy, v1 and v2
    wherever it is mounted (cgroups.layout), deepest first."""
    return layout.read().labkit_groups()


def remove_cgroups(dry_run: bool = False) -> list[str]:
    """Kill the processes in labkit cgroups, then rmdir the groups bottom-up.

    cgroups(7): a cgroup can be removed (rmdir) only when it has no processes
    and no child groups. A v2 group is emptied with cgroup.kill (and, on a
    kernel before 5.14, v1's SIGKILL loop: cgroups.v2.kill); a v1 group has
    no cgroup.kill and gets the loop. Deepest first, so each group's children
    are gone before it.
    """
    if dry_run:
        return [f"cgroup {group}" for group in labkit_cgroups()]
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


def remove_trace_instances(dry_run: bool = False) -> list[str]:
    """Remove tracefs instances labkit-PID-N (rmdir removes an instance, see ftrace docs)."""
    from .trace import INSTANCE_NAME

    removed = []
    root = _tracefs()
    if root and os.path.isdir(f"{root}/instances"):
        for name in sorted(os.listdir(f"{root}/instances")):
            if INSTANCE_NAME.fullmatch(name):
                if not dry_run:
                    os.rmdir(f"{root}/instances/{name}")
                removed.append(f"tracefs instance {name}")
    return removed


def remove_kprobes(dry_run: bool = False) -> list[str]:
    """Remove kprobe events of groups labkit_PID_N (the cap_capable fallback of trace.py):
    writing ``-:GROUP/EVENT`` to kprobe_events deletes one (kprobetrace.rst). The
    file is opened O_APPEND, without the seek to its end that open(path, "a")
    does: the kernel refuses that seek with EINVAL (seq_lseek, fs/seq_file.c)."""
    from .trace import KPROBE_GROUP

    removed = []
    root = _tracefs()
    path = f"{root}/kprobe_events"
    if root and os.path.exists(path):
        with open(path) as f:
            names = [line.split()[0].split(":", 1)[1] for line in f if line.strip()]
        for name in names:
            if KPROBE_GROUP.fullmatch(name.split("/")[0]):
                if not dry_run:
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                    try:
                        os.write(fd, f"-:{name}\n".encode())
                    finally:
                        os.close(fd)
                removed.append(f"kprobe event {name}")
    return removed


def remove_links(dry_run: bool = False) -> list[str]:
    """Delete the bridge labkit0 and the veth ends lk-X-Y, lk-X-Yc (through netlink, pyroute2)."""
    from pyroute2 import IPRoute  # imported here: only cleanup needs netlink
    from pyroute2.netlink.exceptions import NetlinkError

    removed = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if is_labkit_link(name):
                if not dry_run:
                    try:
                        ipr.link("del", index=link["index"])
                    except NetlinkError as e:
                        if e.code != errno.ENODEV:      # gone with its peer, deleted just before
                            raise
                removed.append(f"link {name}")
    return removed


def remove_loop_devices(dry_run: bool = False) -> list[str]:
    """Detach loop devices whose backing file is labkit's (loopdev.py), delete the files."""
    from .loopdev import remove_leftovers

    return remove_leftovers(dry_run)


STEPS = (remove_cgroups, remove_trace_instances, remove_kprobes, remove_mounts, remove_loop_devices, remove_netns,
         remove_links)


def cleanup(dry_run: bool = False) -> list[str]:
    """Run every step; return a line for each object removed (with ``dry_run``:
    each object that would be, and remove nothing)."""
    removed: list[str] = []
    for step in STEPS:
        removed += step(dry_run)
    return removed
