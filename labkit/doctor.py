"""`labkit doctor`: is this host ready for the lab? One check per kernel feature.

Each check reads what the kernel itself reports (/proc/self/ns, /proc/filesystems,
/proc/mounts, /sys/fs/cgroup, tracefs) and says what to do when it is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass

from . import kernel

CGROUP_ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("cpu", "memory", "pids", "io", "blkio", "cpuset", "devices", "freezer")
TRACEFS = "/sys/kernel/tracing"
TOOLS = ("busybox", "strace", "unshare")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = True


def _mounts() -> list[list[str]]:
    with open("/proc/mounts") as f:
        return [line.split() for line in f]


def cgroup_controllers() -> dict[str, str]:
    """Controller name -> "v1" or "v2", by where the kernel has it mounted.

    A controller is on v1 if a cgroup (v1) hierarchy is mounted with it, else on
    v2 if it is listed in the v2 root's cgroup.controllers (cgroups(7)).
    """
    found: dict[str, str] = {}
    for _, mountpoint, fstype, options, *_ in _mounts():
        if fstype == "cgroup":
            for opt in options.split(","):
                if opt in CONTROLLERS:
                    found[opt] = "v1"
        elif fstype == "cgroup2":
            try:
                with open(os.path.join(mountpoint, "cgroup.controllers")) as f:
                    for c in f.read().split():
                        found.setdefault(c, "v2")
            except OSError:
                pass
    return found


def checks() -> list[Check]:
    """Every check, in the order the lab needs them."""
    result = [
        Check("root", os.geteuid() == 0, f"euid {os.geteuid()}",
              "run labkit as root: inside the lab VM, or with sudo"),
        Check("kernel", True, os.uname().release + " " + os.uname().machine),
        Check("python", sys.version_info >= (3, 11), sys.version.split()[0],
              "install Python 3.11 or newer"),
    ]
    for ns in kernel.NAMESPACES:
        present = os.path.exists(f"/proc/self/ns/{ns}")
        result.append(Check(f"namespace {ns}", present,
                            "available" if present else "missing",
                            f"this kernel was built without CONFIG_{ns.upper()}_NS"))
    with open("/proc/filesystems") as f:
        filesystems = f.read().split()
    for fs in ("overlay", "tmpfs", "proc", "tracefs"):
        result.append(Check(f"filesystem {fs}", fs in filesystems,
                            "supported" if fs in filesystems else "not supported",
                            f"load its module: modprobe {fs}"))
    controllers = cgroup_controllers()
    for c in ("cpu", "memory", "pids"):
        result.append(Check(f"cgroup {c}", c in controllers,
                            f"cgroup {controllers[c]}" if c in controllers else "not mounted",
                            f"enable the {c} controller (cgroup_enable={c} on the kernel command line)"))
    io = controllers.get("io") or controllers.get("blkio")
    result.append(Check("cgroup io", io is not None,
                        f"cgroup {io} ({'io' if 'io' in controllers else 'blkio'})" if io else "not mounted",
                        "enable the io (v2) or blkio (v1) controller"))
    traced = any(m[2] == "tracefs" and m[1] == TRACEFS for m in _mounts())
    result.append(Check("tracefs", traced, f"mounted at {TRACEFS}" if traced else "not mounted",
                        f"mount it: mount -t tracefs tracefs {TRACEFS}", required=False))
    for tool in TOOLS:
        path = shutil.which(tool)
        result.append(Check(f"tool {tool}", path is not None, path or "not found",
                            f"apt-get install {'busybox-static' if tool == 'busybox' else tool}",
                            required=tool == "busybox"))
    return result


def ready(results: list[Check]) -> bool:
    """True when every required check passed."""
    return all(c.ok for c in results if c.required)


def report(results: list[Check]) -> str:
    """The human-readable report, one line a check."""
    lines = []
    for c in results:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        line = f"[{mark}] {c.name:<22} {c.detail}"
        if not c.ok:
            line += f"  -> {c.hint}"
        lines.append(line)
    lines.append("ready" if ready(results) else "NOT ready: fix the FAIL lines above")
    return "\n".join(lines)


def as_dicts(results: list[Check]) -> list[dict[str, object]]:
    return [asdict(c) for c in results]
