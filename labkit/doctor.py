"""`labkit doctor`: is this host ready for the lab? One check per kernel feature.

Each check reads what the kernel itself reports (/proc/self/ns, /proc/filesystems,
/proc/self/mountinfo through labkit.mountinfo and cgroups.layout) and says what
to do when it is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass

from . import devices, kernel, mountinfo, trace
from .cgroups import layout
from .errors import LabkitError

TOOLS = ("busybox", "strace", "unshare")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = True


def cgroup_controllers() -> dict[str, str]:
    """Controller name -> "v1" or "v2", by where the kernel has it mounted
    (cgroups.layout: on v1 if a cgroup v1 hierarchy is mounted with it, else
    on v2 if the v2 root's cgroup.controllers lists it, cgroups(7))."""
    return layout.read().versions()


def cgroup_mounts(where: layout.Layout) -> str:
    """Where the hierarchies are mounted: "v2 at /sys/fs/cgroup" (pure v2), or v1 and v2 (hybrid)."""
    parts = [f"v1 at {os.path.dirname(where.v1[0].mount_point)}/* ({len(where.v1)} hierarchies)"] \
        if where.v1 else []
    if where.v2:
        parts.append(f"v2 at {where.v2.mount_point}")
    return ", ".join(parts) or "none mounted"


def filesystem_support(fs: str) -> str | None:
    """How this kernel supports filesystem type ``fs``, or None.

    /proc/filesystems lists the types registered now (proc(5)). A type built as
    a module (Debian's overlay) is registered only once loaded, and the kernel
    loads it itself at the first mount of that type: get_fs_type() calls
    request_module("fs-NAME") (fs/filesystems.c), the alias the module
    declares with MODULE_ALIAS_FS, listed in modules.alias (modprobe(8)).
    """
    with open("/proc/filesystems") as f:
        if fs in f.read().split():
            return "supported"
    try:
        with open(f"/lib/modules/{os.uname().release}/modules.alias") as f:
            if any(line.split()[1:2] == [f"fs-{fs}"] for line in f):
                return "supported (module, loaded by the kernel at the first mount)"
    except FileNotFoundError:
        pass
    return None


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
    for fs in ("overlay", "tmpfs", "proc", "tracefs"):
        support = filesystem_support(fs)
        result.append(Check(f"filesystem {fs}", support is not None, support or "not supported",
                            f"this kernel has neither {fs} built in nor its module"))
    where = layout.read()
    result.append(Check("cgroup hierarchies", bool(where.v1 or where.v2), cgroup_mounts(where),
                        "mount cgroup2: mount -t cgroup2 none /sys/fs/cgroup"))
    controllers = where.versions()
    for c in ("cpu", "memory", "pids"):
        result.append(Check(f"cgroup {c}", c in controllers,
                            f"cgroup {controllers[c]}" if c in controllers else "not mounted",
                            f"enable the {c} controller (cgroup_enable={c} on the kernel command line)"))
    io = controllers.get("io") or controllers.get("blkio")
    result.append(Check("cgroup io", io is not None,
                        f"cgroup {io} ({'io' if 'io' in controllers else 'blkio'})" if io else "not mounted",
                        "enable the io (v2) or blkio (v1) controller"))
    traced = mountinfo.mount_points(mountinfo.read(), "tracefs")
    result.append(Check("tracefs mount", True,
                        f"mounted at {', '.join(traced)}" if traced
                        else "not mounted (labkit trace mounts it where only it sees it)",
                        required=False))
    result.append(capability_events())
    mechanism = devices.mechanism()
    result.append(Check("device control", mechanism is not None,
                        {"v1": "cgroup v1 devices group", "bpf": "cgroup v2 BPF device program"}.get(
                            mechanism or "", "none"),
                        "mount the v1 devices controller, or use cgroup v2 with BPF (CONFIG_CGROUP_BPF)",
                        required=False))
    for tool in TOOLS:
        path = shutil.which(tool)
        result.append(Check(f"tool {tool}", path is not None, path or "not found",
                            f"apt-get install {'busybox-static' if tool == 'busybox' else tool}",
                            required=tool == "busybox"))
    return result


def capability_events() -> Check:
    """Where `labkit trace` gets capability checks on this kernel: the
    capability:cap_capable tracepoint (Linux 6.14 and later), else a kprobe on
    cap_capable (CONFIG_KPROBE_EVENTS), else nowhere."""
    try:
        root = trace.tracefs()
    except LabkitError as e:
        return Check("capability checks", False, e.message, e.hint, required=False)
    source = trace.capability_source(root)
    if source is None:
        return Check("capability checks", False, "no tracepoint and no kprobe events",
                     "use a kernel with CONFIG_KPROBE_EVENTS, or Linux 6.14 or newer", required=False)
    return Check("capability checks", True, source, required=False)


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
