"""`labkit cleanup`: find and remove every kernel object labkit left behind.

Everything labkit creates carries its name (DESIGN.md): mounts under
/run/labkit, network namespaces ``labkit-*`` bound under /run/netns, links
``lk*`` and ``labkit0``, cgroups under a ``labkit/`` parent in each hierarchy,
tracefs instances ``labkit-*``, loop devices backed by /var/lib/labkit/loop/labkit-*, the state of
named containers under /run/labkit/containers (removed with /run/labkit). After a crash, a ``kill -9`` or a notebook
kernel restart, this removes them; each function returns what it removed.
"""

from __future__ import annotations

import os
import shutil

from . import kernel
from .cgroups.v1 import kill_procs

RUN_DIR = "/run/labkit"
NETNS_DIR = "/run/netns"
CGROUP_ROOT = "/sys/fs/cgroup"
TRACE_INSTANCES = "/sys/kernel/tracing/instances"


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix``, deepest first (the order to unmount)."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    inside = [p for p in points if p == prefix or p.startswith(prefix.rstrip("/") + "/")]
    return sorted(set(inside), key=lambda p: p.count("/"), reverse=True)


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
    """Every cgroup directory under a labkit/ parent, in every hierarchy, deepest first."""
    found = []
    if os.path.isdir(CGROUP_ROOT):
        for hierarchy in sorted(os.listdir(CGROUP_ROOT)):
            top = os.path.join(CGROUP_ROOT, hierarchy, "labkit")
            if os.path.isdir(top):
                for root, _, _ in os.walk(top):
                    found.append(root)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def remove_cgroups() -> list[str]:
    """Kill the processes in labkit cgroups, then rmdir the groups bottom-up.

    cgroups(7): a cgroup can be removed (rmdir) only when it has no processes
    and no child groups.
    """
    removed = []
    for group in labkit_cgroups():
        kill_procs([group], timeout=1.0)
        try:
            os.rmdir(group)
            removed.append(f"cgroup {group}")
        except FileNotFoundError:
            pass
    return removed


def remove_trace_instances() -> list[str]:
    """Remove tracefs instances labkit-* (rmdir removes an instance, see ftrace docs)."""
    removed = []
    if os.path.isdir(TRACE_INSTANCES):
        for name in sorted(os.listdir(TRACE_INSTANCES)):
            if name.startswith("labkit-"):
                os.rmdir(os.path.join(TRACE_INSTANCES, name))
                removed.append(f"tracefs instance {name}")
    return removed


def remove_kprobes() -> list[str]:
    """Remove kprobe events of groups labkit_* (the cap_capable fallback of trace.py):
    writing ``-:GROUP/EVENT`` to kprobe_events deletes one (kprobetrace.rst)."""
    removed = []
    path = os.path.join(os.path.dirname(TRACE_INSTANCES), "kprobe_events")
    if os.path.exists(path):
        with open(path) as f:
            names = [line.split()[0].split(":", 1)[1] for line in f if line.strip()]
        for name in names:
            if name.startswith("labkit_"):
                with open(path, "a") as f:
                    f.write(f"-:{name}\n")
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
