"""The cgroup v1 driver: one hierarchy per controller, the same group in each.

Documentation/admin-guide/cgroup-v1/cgroups.rst: each hierarchy is mounted
with its own controllers (``/sys/fs/cgroup/memory``, ``/sys/fs/cgroup/cpu``...);
a process belongs to one group in every hierarchy, so "the container's group"
is a directory of the same name in each hierarchy it needs, and joining it
means writing the PID to ``cgroup.procs`` in each (a one-thread process moving
itself writes "0" to ``tasks`` instead, faster: see cgroups.open_self_move).
v1 has no cgroup.kill: removing a group means killing its processes one by
one until ``cgroup.procs`` is empty, then rmdir.

Files used: cpu.cfs_quota_us with cpu.cfs_period_us (CFS bandwidth, see
Documentation/scheduler/sched-bwc.rst), cpuacct.usage (ns of CPU used),
memory.limit_in_bytes and memory.oom_control (``oom_kill N``,
cgroup-v1/memory.rst), pids.max and pids.events (pids.rst),
blkio.throttle.{read,write}_bps_device ("MAJ:MIN bytes_per_second",
blkio-controller.rst).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Iterable

# Logical controller -> the v1 hierarchies that serve it (CPU usage is cpuacct's).
HIERARCHIES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu", "cpuacct"),
    "memory": ("memory",),
    "pids": ("pids",),
    "io": ("blkio",),
}


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (cpu.stat, memory.oom_control, pids.events) -> dict."""
    result = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            result[fields[0]] = -1 if fields[1] == "max" else int(fields[1])
    return result


def parse_io_service_bytes(text: str, device: str) -> dict[str, int]:
    """blkio.throttle.io_service_bytes ("8:0 Read 4096" lines) -> {"Read": n, "Write": n} of ``device``."""
    result = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == device:
            result[fields[1]] = int(fields[2])
    return result



def procs_of(directories: Iterable[str]) -> list[int]:
    """The PIDs listed in cgroup.procs of these group directories (a gone group has none)."""
    found: set[int] = set()
    for d in directories:
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                found |= {int(p) for p in f.read().split()}
        except FileNotFoundError:
            pass
    return sorted(found)


def kill_procs(directories: Iterable[str], timeout: float = 5.0) -> None:
    """SIGKILL the processes of these groups until none is left (a fork may race
    us): v1 has no cgroup.kill."""
    directories = list(directories)
    deadline = time.monotonic() + timeout
    while (pids := procs_of(directories)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)

class V1Group:
    """``<mount of each hierarchy>/labkit/<name>`` for the controllers given."""

    def __init__(self, mounts: dict[str, str], name: str, controllers: list[str]) -> None:
        self.dirs: dict[str, list[str]] = {
            c: [os.path.join(mounts[h], "labkit", name) for h in HIERARCHIES[c] if h in mounts]
            for c in controllers
        }

    def all_dirs(self) -> list[str]:
        """Each directory once (two controllers may share a mounted hierarchy)."""
        return list(dict.fromkeys(d for dirs in self.dirs.values() for d in dirs))

    def create(self) -> None:
        """mkdir the group in each hierarchy; on failure remove those made."""
        made: list[str] = []
        try:
            for d in self.all_dirs():
                os.makedirs(os.path.dirname(d), exist_ok=True)
                os.mkdir(d)
                made.append(d)
        except BaseException:
            for d in reversed(made):
                os.rmdir(d)
            raise

    def path(self, controller: str, file: str) -> str:
        """The file in whichever of the controller's hierarchies has it."""
        for d in self.dirs[controller]:
            if os.path.exists(os.path.join(d, file)):
                return os.path.join(d, file)
        raise FileNotFoundError(f"{file} in the {controller} group")

    def write(self, controller: str, file: str, text: str) -> None:
        with open(self.path(controller, file), "w") as f:
            f.write(text)

    def read(self, controller: str, file: str) -> str:
        with open(self.path(controller, file)) as f:
            return f.read()

    def add(self, pid: int) -> None:
        """Write ``pid`` to cgroup.procs in every hierarchy of the group."""
        for d in self.all_dirs():
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    def procs(self) -> list[int]:
        return procs_of(self.all_dirs())

    def kill(self, timeout: float = 5.0) -> None:
        kill_procs(self.all_dirs(), timeout)

    def remove(self) -> None:
        """rmdir the group in each hierarchy; gone already is fine. A group
        whose last process just died may be busy for a moment: retry EBUSY."""
        for d in self.all_dirs():
            for attempt in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or attempt == 99:
                        raise
                    time.sleep(0.01)
