"""A snapshot of the kernel objects labkit could leave on the host.

Tests compare a snapshot before and after: any namespace held by a process or
a bind mount, any mount, cgroup, link, tracefs instance or container process
that appeared is a leak.

It imports nothing from labkit, so that a bug in labkit's own view of the
host (where cgroups or tracefs are mounted) cannot hide a leak: it reads
/proc/self/mountinfo itself and walks every cgroup mount listed there.
"""

from __future__ import annotations

import os
import re
import subprocess

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


def _unescape(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \040 \011 \012 \134 (proc(5))."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mountinfo() -> list[tuple[str, str, str]]:
    """(fstype, mount point, source) of every line of /proc/self/mountinfo: the
    fields after the " - " separator, and the mount point (field 5) before it."""
    table = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.rstrip("\n").split(" - ", 1)
            fstype, source = (right.split(" ") + [""])[:2]
            table.append((_unescape(fstype), _unescape(left.split(" ")[4]), _unescape(source)))
    return table


def _mounts() -> set[str]:
    """Every mount, tracefs and debugfs included: one that appeared is a leak
    (labkit must never leave a host-wide mount it did not find)."""
    return {f"{fstype} {point} {source}" for fstype, point, source in _mountinfo()}


def _cgroups() -> set[str]:
    """Every group below labkit/ in every mounted cgroup hierarchy, v1 and v2,
    wherever it is mounted (/sys/fs/cgroup/labkit on pure v2,
    /sys/fs/cgroup/<controller>/labkit on v1, /sys/fs/cgroup/unified/labkit)."""
    found = set()
    for fstype, point, _ in _mountinfo():
        top = os.path.join(point, "labkit")
        if fstype in ("cgroup", "cgroup2") and os.path.isdir(top):
            found |= {root for root, _, _ in os.walk(top) if root != top}
    return found


def _tracefs() -> tuple[set[str], set[str]]:
    """(tracefs instances labkit*, kprobe events labkit_*). Every tracefs mount
    shows the same instances (one superblock), so one mount point is enough;
    with tracefs mounted nowhere here, it is looked at from a private mount
    namespace (unshare(1)), so that this check mounts nothing on the host."""
    points = [point for fstype, point, _ in _mountinfo() if fstype == "tracefs"]
    if points:
        path = points[0]
        instances = os.listdir(f"{path}/instances") if os.path.isdir(f"{path}/instances") else []
        try:
            with open(f"{path}/kprobe_events") as f:
                kprobes = f.read().splitlines()
        except FileNotFoundError:
            kprobes = []
    else:
        out = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             "mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || exit 0; cd /sys/kernel/tracing;"
             " ls instances 2>/dev/null; echo ---; cat kprobe_events 2>/dev/null; true"],
            capture_output=True, text=True, check=True, timeout=30).stdout
        listed, _, events = out.partition("---\n")
        instances, kprobes = listed.split(), events.splitlines()
    return ({n for n in instances if n.startswith("labkit")},
            {line.split()[0] for line in kprobes if line.split() and "labkit_" in line.split()[0]})


def _links() -> set[str]:
    return {n for n in os.listdir("/sys/class/net") if n == "labkit0" or n.startswith("lk")}


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


def _detached_records() -> set[str]:
    """Records of detached containers (detach.py: /run/labkit/detached/NAME, log and status)."""
    path = "/run/labkit/detached"
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
    instances, kprobes = _tracefs()
    return {
        "namespaces": _namespaces(),
        "mounts": _mounts(),
        "cgroups": _cgroups(),
        "links": _links(),
        "tracefs instances": instances,
        "kprobe events": kprobes,
        "named netns": _netns(),
        "overlay dirs": _overlay_dirs(),
        "loop devices": _loop_devices(),
        "container states": _container_states(),
        "detached records": _detached_records(),
    }


def leaks(before: dict[str, set], after: dict[str, set]) -> dict[str, set]:
    """What is in ``after`` but was not in ``before``, by kind."""
    return {kind: after[kind] - before[kind] for kind in after if after[kind] - before[kind]}
