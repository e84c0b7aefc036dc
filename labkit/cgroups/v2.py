"""The cgroup v2 driver: one unified tree, one directory per group.

Documentation/admin-guide/cgroup-v2.rst: every controller lives in a single
hierarchy. A controller is available in a group only when its parent lists it
in ``cgroup.subtree_control`` (written ``+cpu +memory``), and, apart from the
root, a group that enables controllers for its children may hold no processes
("no internal processes" rule), so labkit's processes live only in leaves
below ``labkit/``. Core files exist in every non-root group, whichever
controllers are enabled: ``cgroup.procs`` (write a PID to move the process),
``cgroup.events`` (``populated``, ``frozen``), ``cgroup.freeze``,
``cgroup.kill`` (write 1: SIGKILL every process inside, since Linux 5.14) and
``cpu.stat`` (``usage_usec``...).

Files come in the formats the document names: "flat keyed" (``key value`` per
line: cpu.stat, memory.events, cgroup.events) and "nested keyed" (``8:16
rbps=2097152 wbps=max``: io.max, io.stat).
"""

from __future__ import annotations

import errno
import os
import time

from .v1 import kill_procs

PERIOD_US = 100_000  # cpu.max's default period: 100 ms


def format_cpu_max(quota_us: int, period_us: int = PERIOD_US) -> str:
    """cpu.max: "$MAX $PERIOD": the group may run quota_us in each period_us."""
    return f"{quota_us} {period_us}"


def format_io_max(device: str, key: str, value: int) -> str:
    """io.max: "MAJ:MIN key=value" for key rbps, wbps, riops or wiops."""
    return f"{device} {key}={value}"


def parse_flat_keyed(text: str) -> dict[str, int]:
    """``key value`` lines -> {key: value}; "max" becomes -1."""
    result = {}
    for line in text.splitlines():
        if line.strip():
            key, value = line.split()[:2]
            result[key] = -1 if value == "max" else int(value)
    return result


def parse_nested_keyed(text: str) -> dict[str, dict[str, int]]:
    """``MAJ:MIN k=v k=v`` lines -> {"MAJ:MIN": {k: v}}; "max" becomes -1."""
    result: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if fields:
            pairs = (f.split("=", 1) for f in fields[1:])
            result[fields[0]] = {k: -1 if v == "max" else int(v) for k, v in pairs}
    return result


def populated(path: str) -> bool:
    """cgroup.events ``populated``: 1 while the group or a descendant has a process."""
    with open(os.path.join(path, "cgroup.events")) as f:
        return bool(parse_flat_keyed(f.read()).get("populated"))


def kill(path: str, timeout: float = 5.0) -> None:
    """SIGKILL every process in the group at ``path`` and its descendants, and
    wait until ``populated 0``. cgroup.kill (write "1", Linux 5.14) does it in
    one step, forks racing it included (cgroup-v2.rst, "cgroup.kill"); a kernel
    without it gets v1's loop: SIGKILL what cgroup.procs lists until empty."""
    if not os.path.isdir(path):
        return
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except FileNotFoundError:
        kill_procs([path], timeout)
    deadline = time.monotonic() + timeout
    while populated(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def rmdir(path: str, timeout: float = 1.0) -> bool:
    """rmdir the group; True when it was there. The kernel answers EBUSY while
    the group still has a process or a child group (cgroup_destroy_locked in
    kernel/cgroup/cgroup.c): a process just killed may take a moment to go."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class V2Group:
    """``<mount>/labkit/<name>`` in the unified hierarchy, with ``controllers`` enabled."""

    def __init__(self, mount: str, name: str, controllers: list[str]) -> None:
        self.parent = os.path.join(mount, "labkit")
        self.path = os.path.join(self.parent, name)
        self.mount = mount
        self.controllers = controllers

    def create(self) -> None:
        """mkdir labkit/ and the group, enabling controllers top-down on the way."""
        os.makedirs(self.parent, exist_ok=True)
        for group in (self.mount, self.parent):
            for c in self.controllers:
                self._write(group, "cgroup.subtree_control", f"+{c}")
        os.mkdir(self.path)

    def write(self, file: str, text: str) -> None:
        self._write(self.path, file, text)

    def read(self, file: str) -> str:
        with open(os.path.join(self.path, file)) as f:
            return f.read()

    def add(self, pid: int) -> None:
        """Move ``pid`` (the whole process) into the group: write it to cgroup.procs."""
        self.write("cgroup.procs", str(pid))

    def procs(self) -> list[int]:
        return [int(p) for p in self.read("cgroup.procs").split()]

    def freeze(self, frozen: bool) -> None:
        """cgroup.freeze: 1 stops every process of the group, 0 thaws them;
        cgroup.events says ``frozen 1`` once they all are."""
        self.write("cgroup.freeze", "1" if frozen else "0")

    def kill(self, timeout: float = 5.0) -> None:
        """cgroup.kill: SIGKILL every process inside; wait until ``populated 0`` (``kill``)."""
        kill(self.path, timeout)

    def remove(self) -> None:
        """rmdir the group (it must hold no process); gone already is fine."""
        rmdir(self.path)

    @staticmethod
    def _write(group: str, file: str, text: str) -> None:
        with open(os.path.join(group, file), "w") as f:
            f.write(text)
