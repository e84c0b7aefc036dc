"""cgroups: limit what a container may use, and read back what it used.

cgroups(7): a control group is a directory in a cgroup filesystem; writing a
PID to its ``cgroup.procs`` moves that process (and its future children) into
it, and the group's controller files set limits the kernel enforces on every
process inside: CPU time per period (cpu), memory (memory, with the OOM
killer), number of tasks (pids), block I/O bytes per second (io / blkio).

Two versions exist. v1 mounts one hierarchy per controller; v2 has one unified
tree. Hosts mix them ("hybrid": some controllers on v1, the rest on v2), so the
version is detected per controller by ``layout`` (the one module that knows
where cgroups are mounted, from /proc/self/mountinfo) and v2's
``cgroup.controllers``. A limit is a row of ``LIMITS``: its name, the v1 file,
the v2 file, the parser of the user's value. Everything labkit makes lives
under a ``labkit/`` parent in each hierarchy.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Callable, NamedTuple

from ..errors import LabkitError, UsageError
from ..spawn import Primitive
from . import layout, v1, v2
from .units import parse_count, parse_cpus, parse_rate, parse_size


def cpu_quota_us(cpus: str | float) -> int:
    """CPUs -> microseconds of CPU time allowed per 100 ms period (0.5 -> 50000)."""
    return round(parse_cpus(cpus) * v2.PERIOD_US)


class Limit(NamedTuple):
    """One limit: Cgroup keyword, controller, v1 file and line, v2 file and line."""

    name: str
    controller: str
    parse: Callable[[object], int]
    v1_file: str
    v1_line: Callable[[int, str], str]     # (value, "MAJ:MIN") -> what to write
    v2_file: str
    v2_line: Callable[[int, str], str]


LIMITS: tuple[Limit, ...] = (
    # v1's cpu.cfs_period_us defaults to 100000 us, the same period as v2's cpu.max.
    Limit("cpu", "cpu", cpu_quota_us, "cpu.cfs_quota_us", lambda q, d: str(q),
          "cpu.max", lambda q, d: v2.format_cpu_max(q)),
    Limit("memory", "memory", lambda s: parse_size(s, "memory limit"),
          "memory.limit_in_bytes", lambda b, d: str(b), "memory.max", lambda b, d: str(b)),
    Limit("pids", "pids", lambda n: parse_count(n, "pids limit"),
          "pids.max", lambda n, d: str(n), "pids.max", lambda n, d: str(n)),
    Limit("io_read_bps", "io", lambda r: parse_rate(r, "read rate"),
          "blkio.throttle.read_bps_device", lambda r, d: f"{d} {r}",
          "io.max", lambda r, d: v2.format_io_max(d, "rbps", r)),
    Limit("io_write_bps", "io", lambda r: parse_rate(r, "write rate"),
          "blkio.throttle.write_bps_device", lambda r, d: f"{d} {r}",
          "io.max", lambda r, d: v2.format_io_max(d, "wbps", r)),
)


# Swap under a memory limit: none. Without a swap limit, a group at its memory
# limit has its anonymous pages swapped out instead of being OOM-killed, so on a
# host with swap a memory bomb under --memory 32M runs on (slowly) instead of
# ending. labkit sets the group's swap to 0, so that the memory limit is the
# whole budget, the same on a host with swap (the lab VM) and without (a
# developer host): the OOM killer acts at the limit, within seconds.
# (Docker's default, for -m X without --memory-swap, is X of swap on top:
# twice the limit in all; labkit does not follow it, for that sameness.)
# The kernel's files (only on kernels with swap accounting, CONFIG_MEMCG_SWAP
# and not swapaccount=0; absent otherwise, then nothing can be set):
# - v2: memory.swap.max, "swap usage hard limit" (cgroup-v2.rst); 0: no swap.
# - v1: memory.memsw.limit_in_bytes, the limit of memory + swap together
#   (cgroup-v1/memory.rst, 2.4 "swap extension"); equal to limit_in_bytes: no
#   swap. The kernel keeps memsw >= limit_in_bytes (mem_cgroup_resize_max,
#   mm/memcontrol-v1.c: EINVAL otherwise), so it is written after the limit,
#   which it may then equal (a new group's memsw starts unlimited).
SWAP: dict[str, tuple[str, Callable[[int], str]]] = {
    "v1": ("memory.memsw.limit_in_bytes", lambda memory: str(memory)),
    "v2": ("memory.swap.max", lambda memory: "0"),
}


class Counter(NamedTuple):
    """One number read back: (file, key or None for a one-number file, scale) per version."""

    name: str
    controller: str
    v1: tuple[str, str | None, float]
    v2: tuple[str, str | None, float]

    def value(self, version: str, read: Callable[[str], str]) -> int | None:
        """This counter in one group: ``read(file)`` returns a file of the group
        in ``version``; None when the kernel offers no such file or key."""
        file, key, scale = self.v1 if version == "v1" else self.v2
        try:
            text = read(file)
        except FileNotFoundError:
            return None                           # not offered by this kernel/version
        values = {None: int(text.split()[0])} if key is None else v2.parse_flat_keyed(text)
        return round(values[key] * scale) if key in values else None


STATS: tuple[Counter, ...] = (
    Counter("cpu_usage_usec", "cpu", ("cpuacct.usage", None, 1e-3), ("cpu.stat", "usage_usec", 1)),
    Counter("nr_periods", "cpu", ("cpu.stat", "nr_periods", 1), ("cpu.stat", "nr_periods", 1)),
    Counter("nr_throttled", "cpu", ("cpu.stat", "nr_throttled", 1), ("cpu.stat", "nr_throttled", 1)),
    Counter("throttled_usec", "cpu", ("cpu.stat", "throttled_time", 1e-3), ("cpu.stat", "throttled_usec", 1)),
    Counter("memory_current", "memory", ("memory.usage_in_bytes", None, 1), ("memory.current", None, 1)),
    Counter("memory_peak", "memory", ("memory.max_usage_in_bytes", None, 1), ("memory.peak", None, 1)),
    Counter("pids_current", "pids", ("pids.current", None, 1), ("pids.current", None, 1)),
    Counter("pids_peak", "pids", ("pids.peak", None, 1), ("pids.peak", None, 1)),
)

EVENTS: tuple[Counter, ...] = (
    Counter("oom_kill", "memory", ("memory.oom_control", "oom_kill", 1), ("memory.events", "oom_kill", 1)),
    Counter("memory_max", "memory", ("memory.failcnt", None, 1), ("memory.events", "max", 1)),
    Counter("pids_max", "pids", ("pids.events", "max", 1), ("pids.events", "max", 1)),
)

ACCOUNTING = ("cpu", "memory", "pids")   # joined whenever the host has them, to read usage


class MissingControllerError(LabkitError):
    """The host has no such cgroup controller, on v1 or v2."""

    def __init__(self, controller: str) -> None:
        super().__init__(f"the {controller} cgroup controller is not available on this host",
                         f"it is neither a mounted cgroup v1 hierarchy nor in cgroup v2's "
                         f"cgroup.controllers; enable it (cgroup_enable={controller} on the kernel "
                         f"command line) or drop that limit; see `labkit doctor`")


def mounts(where: layout.Layout | None = None) -> tuple[dict[str, str], str | None]:
    """(v1 hierarchy name -> mount point, the cgroup2 mount point or None), from ``layout``."""
    where = where or layout.read()
    v1_mounts = {h: point for hs in v1.HIERARCHIES.values() for h in hs
                 if (point := where.v1_mount(h)) is not None}
    return v1_mounts, where.v2_mount


def controllers(where: layout.Layout | None = None) -> dict[str, str]:
    """Logical controller (cpu, memory, pids, io) -> "v1" or "v2", as this host has it.
    On v1 a logical controller is served by its first hierarchy (cpu, memory,
    pids, blkio: v1.HIERARCHIES); on v2 by the controller of the same name."""
    where = where or layout.read()
    found = {}
    for c, hierarchies in v1.HIERARCHIES.items():
        if where.version(hierarchies[0]) == "v1":
            found[c] = "v1"
        elif where.version(c) == "v2":
            found[c] = "v2"
    return found


def open_self_move(directory: str) -> int:
    """Open the file through which a process moves *itself* into the group at
    ``directory``, by writing "0" to it (cgroups(7): 0 means the writer).

    A v1 group has ``tasks``: "0" there moves the calling thread, and the
    container's PID 1 is single-threaded when it writes, so that is the whole
    process. A thread moving itself lets the kernel skip the global lock that
    holds every thread group still (cgroup_threadgroup_rwsem, whose writer
    waits for an RCU grace period; see cgroup_procs_write_start in
    kernel/cgroup/cgroup.c, and notebook A1, which measures it). A v2 domain group
    takes whole processes only, through ``cgroup.procs`` (``cgroup.threads``
    works only inside a threaded subtree), and pays the grace period.
    """
    tasks = os.path.join(directory, "tasks")
    path = tasks if os.path.exists(tasks) else os.path.join(directory, "cgroup.procs")
    return os.open(path, os.O_WRONLY | os.O_CLOEXEC)


def block_device(path: str) -> str:
    """"MAJ:MIN" of the disk holding ``path`` (a partition's whole disk: the
    I/O throttle applies to disks, blkio-controller.rst) or of ``path`` itself
    when it is a block device node such as /dev/loop3."""
    st = os.stat(path)
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    number = f"{os.major(dev)}:{os.minor(dev)}"
    sysfs = f"/sys/dev/block/{number}"
    if not os.path.exists(sysfs):
        raise UsageError(f"no block device behind {path} (its filesystem is not on a disk)",
                         "name one, e.g. --io-write-bps /dev/loop0:2MB/s")
    if os.path.exists(os.path.join(sysfs, "partition")):
        with open(os.path.join(sysfs, "..", "dev")) as f:
            number = f.read().strip()
    return number


class Cgroup(Primitive):
    """A group ``labkit/<name>`` in every hierarchy it needs, with its limits.

    ``Cgroup("web", cpu=0.5, memory="64M", pids=32, io_write_bps="2MB/s",
    io_device="/dev/loop3")``; the I/O limits apply to ``io_device``'s disk
    (default: the disk holding /). As a Primitive, prepare() makes the group,
    writes the limits and opens each hierarchy's file to join it (``tasks`` on
    v1, ``cgroup.procs`` on v2: ``open_self_move``); enter() (in the container's
    first process, before any other enter()) writes "0" to them, which moves
    the writer itself (cgroups(7)); its children inherit the group.
    release() kills what is left and removes it. As a context manager it does
    prepare() and release() around a block.
    """

    name = "cgroup"

    def __init__(self, name: str, *, io_device: str | None = None, **limits: object) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise UsageError(f"bad cgroup name {name!r}", "use letters, digits, '.', '_', '-' (64 at most)")
        unknown = set(limits) - {row.name for row in LIMITS}
        if unknown:
            raise UsageError(f"unknown cgroup limit {sorted(unknown)[0]!r}",
                             f"choose from {', '.join(row.name for row in LIMITS)}")
        self.group = name
        self.values = {row.name: row.parse(limits[row.name]) for row in LIMITS
                       if limits.get(row.name) is not None}
        needed = {row.controller for row in LIMITS if row.name in self.values}
        if io_device is not None:
            needed.add("io")                      # account the device's I/O even without a limit
        where = layout.read()                     # one look at the mount table
        host = controllers(where)
        for c in sorted(needed):
            if c not in host:
                raise MissingControllerError("blkio/io" if c == "io" else c)
        self.versions = {c: host[c] for c in needed | {c for c in ACCOUNTING if c in host}}
        self.device = block_device(io_device or "/") if "io" in needed else ""
        v1_mounts, unified = mounts(where)
        def on(version: int) -> list[str]:
            return sorted(c for c, v in self.versions.items() if v == version)
        # A v2 group is made for the controllers on v2, or, with none on v1 either,
        # for its core files (cgroup.kill, cgroup.events, cpu.stat). On a hybrid host
        # whose v2 tree serves none of ours, joining it would only cost PID 1 an
        # RCU grace period (open_self_move).
        self.v2 = v2.V2Group(unified, name, on("v2")) if unified and (on("v2") or not on("v1")) else None
        self.v1 = v1.V1Group(v1_mounts, name, on("v1")) if on("v1") else None
        self.made: list[v1.V1Group | v2.V2Group] = []
        self.procs_fds: list[int] = []

    def paths(self) -> list[str]:
        """Every directory of the group, v2 first."""
        return ([self.v2.path] if self.v2 else []) + (self.v1.all_dirs() if self.v1 else [])

    def prepare(self) -> None:
        """Make the group in each hierarchy and write each limit's file.
        On any failure (also an interrupt) what this call made is removed again."""
        if self.made:
            return
        try:
            for group in (self.v2, self.v1):
                if group:
                    group.create()                # V1Group.create undoes its own on failure
                    self.made.append(group)
            if self.versions.get("io") == "v1":
                self._account_io_v1()
            for row in LIMITS:
                if row.name in self.values:
                    self._set(row)
            for path in self.paths():
                self.procs_fds.append(open_self_move(path))
        except FileExistsError:
            self.release()
            raise LabkitError(f"cgroup labkit/{self.group} exists already",
                              "choose another name, or run `labkit cleanup` to remove leftovers") from None
        except OSError as e:
            self.release()
            raise LabkitError(f"cannot set up cgroup labkit/{self.group}: {e.strerror} ({e.filename})",
                              "check `labkit doctor`; the value may be outside what the kernel accepts") from None
        except BaseException:
            self.release()
            raise

    def _set(self, row: Limit) -> None:
        value = self.values[row.name]
        if self.versions[row.controller] == "v1":
            self.v1.write(row.controller, row.v1_file, row.v1_line(value, self.device))
        else:
            self.v2.write(row.v2_file, row.v2_line(value, self.device))
        if row.name == "memory":
            self._limit_swap(value)

    def _account_io_v1(self) -> None:
        """Make v1 count the device's bytes, limit or not: write a rule "MAJ:MIN 0"
        (0: no limit, blkio-controller.rst) to blkio.throttle.read_bps_device.

        v1's only per-device byte counter for a disk without BFQ is
        blkio.throttle.io_service_bytes, and the kernel adds to it only on a
        disk whose queue has throttling set up (blk_should_throtl in
        block/blk-throttle.h returns early while q->td is NULL). Recent kernels
        (6.18 on this project's hosts) set it up at the first rule written for
        the disk, in any group (tg_set_conf -> blk_throtl_init,
        block/blk-throttle.c), and keep it until the disk goes. Without this, an unlimited group on a disk never
        throttled before read 0 bytes written. (v2's io.stat is counted by
        blk-cgroup itself, for every disk.) A limit written next replaces the rule.
        """
        self.v1.write("io", "blkio.throttle.read_bps_device", f"{self.device} 0")

    def _limit_swap(self, memory: int) -> None:
        """No swap for the group (SWAP): after the memory limit, as the kernel requires on v1."""
        version = self.versions["memory"]
        file, line = SWAP[version]
        try:
            if version == "v1":
                self.v1.write("memory", file, line(memory))
            else:
                self.v2.write(file, line(memory))
        except FileNotFoundError:
            pass                                  # no swap accounting in this kernel: nothing to set

    def swap_limit(self) -> tuple[str, str] | None:
        """(file, its content) of the group's swap limit (SWAP), or None where the kernel has none."""
        if "memory" not in self.versions:
            return None
        file = SWAP[self.versions["memory"]][0]
        try:
            text = self.v1.read("memory", file) if self.versions["memory"] == "v1" else self.v2.read(file)
        except FileNotFoundError:
            return None
        return file, text.strip()

    def enter(self) -> None:
        """Move the calling process (the container's PID 1) into the group.

        cgroups(7): writing "0" moves the writer (open_self_move). The files were
        opened by the parent: since Linux 5.16 the kernel checks the permission
        to migrate with the credentials (and cgroup namespace) of the opener,
        so this works after a user namespace's setresuid(2) too. Only PID 1 and
        what it starts are inside: child A, the pipeline's relay, is not
        counted by pids.max nor a candidate for the group's OOM killer.
        """
        for fd in self.procs_fds:
            os.write(fd, b"0")

    def add(self, pid: int) -> None:
        """Move process ``pid`` into the group in every hierarchy."""
        if self.v2:
            self.v2.add(pid)
        if self.v1:
            self.v1.add(pid)

    def procs(self) -> list[int]:
        """PIDs in the group (union over hierarchies)."""
        found = set(self.v1.procs() if self.v1 else []) | set(self.v2.procs() if self.v2 else [])
        return sorted(found)

    def _read(self, counters: tuple[Counter, ...]) -> dict[str, int]:
        result = {}
        for counter in counters:
            version = self.versions.get(counter.controller)
            if version is None and counter.controller == "cpu" and self.v2:
                version = "v2"                    # cpu.stat usage is a v2 core file
            if version is None:
                continue
            read = ((lambda file, c=counter.controller: self.v1.read(c, file)) if version == "v1"
                    else self.v2.read)
            value = counter.value(version, read)
            if value is not None:
                result[counter.name] = value
        return result

    def stats(self) -> dict[str, int]:
        """Live usage: CPU time, throttling, memory, tasks, and I/O bytes of the device."""
        result = self._read(STATS)
        if "io" in self.versions:
            result.update(self.io_bytes())
        return result

    def events(self) -> dict[str, int]:
        """What the kernel did at the limits: OOM kills, times at memory.max, refused forks."""
        return self._read(EVENTS)

    def io_bytes(self) -> dict[str, int]:
        """Bytes read and written on the device (v1 blkio.throttle.io_service_bytes,
        counted from prepare() on: _account_io_v1; v2 io.stat)."""
        if self.versions.get("io") == "v1":
            found = v1.parse_io_service_bytes(self.v1.read("io", "blkio.throttle.io_service_bytes"),
                                              self.device)
            return {"io_rbytes": found.get("Read", 0), "io_wbytes": found.get("Write", 0)}
        found = v2.parse_nested_keyed(self.v2.read("io.stat")).get(self.device, {})
        return {"io_rbytes": found.get("rbytes", 0), "io_wbytes": found.get("wbytes", 0)}

    def release(self) -> None:
        """Kill every process still inside, then remove the groups this object made. Safe twice."""
        while self.procs_fds:
            os.close(self.procs_fds.pop())
        for group in self.made:                   # v2 first: cgroup.kill is atomic
            group.kill()
        while self.made:
            self.made.pop().remove()              # v1 (if made) before v2

    def __enter__(self) -> "Cgroup":
        self.prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def split_device(text: str) -> tuple[str | None, str]:
    """``/dev/loop0:2MB/s`` -> ("/dev/loop0", "2MB/s"); ``2MB/s`` -> (None, "2MB/s")."""
    if text.startswith("/") and ":" in text:
        device, rate = text.split(":", 1)
        if not os.path.exists(device):
            raise UsageError(f"no device {device}", "name an existing block device, e.g. /dev/loop0")
        return device, rate
    return None, text
