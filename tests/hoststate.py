"""A snapshot of the kernel objects labkit could leave on the host.

Tests compare a snapshot before and after: any namespace held by a process or
a bind mount, any mount, cgroup, link, tracefs instance or container process
that appeared is a leak.
"""

from __future__ import annotations

import os

NS_TYPES = ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup")


def _namespaces() -> set[tuple[str, int]]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for ns in NS_TYPES:
            try:
                found.add((ns, os.stat(f"/proc/{pid}/ns/{ns}").st_ino))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    return found


def _mounts() -> set[str]:
    with open("/proc/self/mounts") as f:
        return {" ".join(line.split()[:3]) for line in f}


def _cgroups() -> set[str]:
    found = set()
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        top = f"/sys/fs/cgroup/{hierarchy}/labkit"
        if os.path.isdir(top):
            found |= {root for root, _, _ in os.walk(top) if root != top}
    return found


def _links() -> set[str]:
    return {n for n in os.listdir("/sys/class/net") if n == "labkit0" or n.startswith("lk")}


def _trace_instances() -> set[str]:
    path = "/sys/kernel/tracing/instances"
    return {n for n in os.listdir(path) if n.startswith("labkit")} if os.path.isdir(path) else set()


def _kprobes() -> set[str]:
    path = "/sys/kernel/tracing/kprobe_events"
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {line.split()[0] for line in f if "labkit_" in line.split()[0]}


def _netns() -> set[str]:
    return {n for n in os.listdir("/run/netns") if n.startswith("labkit")} if os.path.isdir("/run/netns") else set()


def _overlay_dirs() -> set[str]:
    """Per-container overlay upper/work directories (mount.py: /run/labkit/mnt-*)."""
    path = "/run/labkit"
    return {n for n in os.listdir(path) if n.startswith("mnt-")} if os.path.isdir(path) else set()


def _container_states() -> set[str]:
    """Named containers' state directories (container.py: /run/labkit/containers/NAME)."""
    path = "/run/labkit/containers"
    return set(os.listdir(path)) if os.path.isdir(path) else set()


def _loop_devices() -> set[str]:
    """Attached loop devices and their backing files (/sys/block/loopN/loop/backing_file)."""
    found = set()
    for name in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                found.add(f"{name} {f.read().strip()}")
        except (FileNotFoundError, NotADirectoryError):
            pass
    return found


def snapshot() -> dict[str, set]:
    return {
        "namespaces": _namespaces(),
        "mounts": _mounts(),
        "cgroups": _cgroups(),
        "links": _links(),
        "tracefs instances": _trace_instances(),
        "kprobe events": _kprobes(),
        "named netns": _netns(),
        "overlay dirs": _overlay_dirs(),
        "loop devices": _loop_devices(),
        "container states": _container_states(),
    }


def leaks(before: dict[str, set], after: dict[str, set]) -> dict[str, set]:
    """What is in ``after`` but was not in ``before``, by kind."""
    return {kind: after[kind] - before[kind] for kind in after if after[kind] - before[kind]}
