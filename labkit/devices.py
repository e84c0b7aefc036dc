"""Device access: which device nodes the container may open, whatever nodes it makes.

A device node is only a name for a (type, major, minor) number; whoever can
open a node for a disk reads the disk, whichever filesystem the node is on.
Docker keeps CAP_MKNOD in a container, so the node itself cannot be the guard:
the devices cgroup is. Documentation/admin-guide/cgroup-v1/devices.rst: each
group has a list of ``type major:minor access`` rules (type ``a`` all, ``c``
char, ``b`` block; access ``r`` read, ``w`` write, ``m`` mknod); writing ``a``
to ``devices.deny`` empties it, each write to ``devices.allow`` adds a rule.
open(2) of a device not on the list fails with EPERM, checked at open time
against the cgroup of the opener, even for root.

This is the v1 controller. cgroup v2 has no devices files: there the same
rules are a BPF program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the
group (what runc generates), which labkit does not build: ``available()``
is False on such a host and the primitive refuses to start (see container.py).
"""

from __future__ import annotations

import errno
import os
import time

from .cgroups import open_self_move
from .cgroups.v1 import kill_procs
from .errors import LabkitError, UsageError
from .spawn import Primitive

# runc's default rules (libcontainer/specconv AllowedDevices): mknod of any
# node, and read/write/mknod of the safe character devices only.
ALLOWED: tuple[str, ...] = (
    "c *:* m", "b *:* m",               # mknod anything: opening it is what is checked
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm",    # null, zero, full
    "c 1:8 rwm", "c 1:9 rwm",                  # random, urandom
    "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm",   # tty, ptmx, the pty slaves of /dev/pts
)


def hierarchy() -> str | None:
    """Where the v1 devices hierarchy is mounted, or None (pure cgroup v2)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            _, point, fstype, options = line.split()[:4]
            if fstype == "cgroup" and "devices" in options.split(","):
                return point
    return None


def available() -> bool:
    return hierarchy() is not None


class DeviceCgroup(Primitive):
    """``labkit/<name>`` in the devices hierarchy, allowing only ``allowed``.

    prepare() makes the group, denies everything, adds each rule, and opens its
    ``tasks`` file; enter() writes "0" to it (the writer moves itself, as
    cgroups.Cgroup does: cgroups.open_self_move); release() kills what is left
    and removes the group.
    """

    name = "devices"

    def __init__(self, group: str, allowed: tuple[str, ...] = ALLOWED) -> None:
        mount = hierarchy()
        if mount is None:
            raise LabkitError("no cgroup v1 devices hierarchy on this host",
                              "labkit builds no cgroup v2 device program; run without device rules")
        if "/" in group or group in ("", ".", ".."):
            raise UsageError(f"bad cgroup name {group!r}", "use letters, digits, '.', '_', '-'")
        self.path = os.path.join(mount, "labkit", group)
        self.allowed = allowed
        self.made = False
        self.procs_fd: int | None = None

    def prepare(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            os.mkdir(self.path)
            self.made = True
            self._write("devices.deny", "a")
            for rule in self.allowed:
                self._write("devices.allow", rule)
            self.procs_fd = open_self_move(self.path)
        except FileExistsError:
            raise LabkitError(f"device cgroup {self.path} exists already",
                              "choose another name, or run `labkit cleanup` to remove leftovers") from None
        except OSError as e:
            self.release()
            raise LabkitError(f"cannot set up device cgroup {self.path}: {e.strerror}",
                              "check `labkit doctor` and the rule syntax of devices.rst") from None
        except BaseException:
            self.release()
            raise

    def enter(self) -> None:
        if self.procs_fd is not None:
            os.write(self.procs_fd, b"0")

    def rules(self) -> list[str]:
        """The group's effective list (devices.list)."""
        with open(os.path.join(self.path, "devices.list")) as f:
            return f.read().splitlines()

    def release(self) -> None:
        """Kill what is left in the group, then rmdir it. Safe twice."""
        if self.procs_fd is not None:
            os.close(self.procs_fd)
            self.procs_fd = None
        if not self.made:
            return
        kill_procs([self.path])                   # a group holding processes cannot go
        for _ in range(500):
            try:
                os.rmdir(self.path)
                break
            except FileNotFoundError:
                break
            except OSError as e:                  # EBUSY while the killed ones exit
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.01)
        self.made = False

    def _write(self, file: str, text: str) -> None:
        with open(os.path.join(self.path, file), "w") as f:
            f.write(text)
