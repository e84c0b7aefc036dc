"""Loop devices: a file made into a block device, for the disk I/O lab.

loop(4): /dev/loop-control's ioctl LOOP_CTL_GET_FREE returns the number of a
free loop device; LOOP_CONFIGURE (Linux 5.8) on /dev/loopN attaches an open
backing file to it in one step. With LO_FLAGS_AUTOCLEAR the kernel detaches
the device by itself when its last user closes it, so even a crashed lab
leaves no attached device behind once its file descriptors are gone. The
I/O throttle of a cgroup (blkio/io.max) applies to a disk, and a loop
device is one: a lab can throttle it without touching the host's disks.

Backing files live in /var/lib/labkit/loop/ (named labkit-*.img):
``labkit cleanup`` finds labkit's loop devices by that path in
/sys/block/loopN/loop/backing_file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

from .cgroups.units import parse_size
from .errors import LabkitError

BACKING_DIR = "/var/lib/labkit/loop"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
LO_FLAGS_AUTOCLEAR = 4
# struct loop_config {u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]}
# loop_info64: 5 x u64, 4 x u32 (lo_flags last), file name[64], crypt name[64], key[32], 2 x u64.
_LOOP_CONFIG = struct.Struct("=II QQQQQ IIII 64s64s32s QQ 8Q")


def _config(fd: int, name: str) -> bytes:
    return _LOOP_CONFIG.pack(fd, 0, 0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR,
                             name.encode()[:63], b"", b"", 0, 0, *([0] * 8))


def backing_file(loop: str) -> str:
    """The backing file of /dev/loopN as sysfs reports it ('' when detached).

    Detaching removes the device's loop/ attribute group (__loop_clr_fd ->
    loop_sysfs_exit in drivers/block/loop.c): a read racing with that gets
    ENODEV from kernfs instead of ENOENT, and means detached as well."""
    try:
        with open(f"/sys/block/{os.path.basename(loop)}/loop/backing_file") as f:
            return f.read().strip()
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV):
            return ""
        raise


class LoopDevice:
    """``with LoopDevice("io-lab", "64M") as dev:`` -> dev.path is /dev/loopN."""

    def __init__(self, name: str, size: str | int = "64M") -> None:
        self.file = os.path.join(BACKING_DIR, f"labkit-{name}.img")
        self.size = parse_size(size, "loop device size")
        self.path = ""
        self._fd = -1

    def attach(self) -> str:
        """Make the sparse backing file and attach it to a free loop device."""
        os.makedirs(BACKING_DIR, exist_ok=True)
        try:
            with open(self.file, "xb") as f:
                f.truncate(self.size)
        except FileExistsError:
            raise LabkitError(f"loop backing file {self.file} exists already",
                              "another lab uses that name; choose another, or `labkit cleanup` "
                              "removes leftovers") from None
        try:
            backing = os.open(self.file, os.O_RDWR | os.O_CLOEXEC)
            try:
                self._configure(backing)
            finally:
                os.close(backing)                 # the loop device holds its own reference
        except BaseException:
            self.detach()
            raise
        return self.path

    def _configure(self, backing: int) -> None:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _attempt in range(20):            # another process may take the same free one
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                fd = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, _config(backing, self.file))
                except OSError as e:
                    os.close(fd)
                    if e.errno == errno.EBUSY:    # taken meanwhile: ask again
                        time.sleep(0.01)
                        continue
                    raise LabkitError(f"cannot attach {self.file} to /dev/loop{number}: {e.strerror}",
                                      "check that the loop module is loaded (modprobe loop)") from None
                self._fd, self.path = fd, f"/dev/loop{number}"
                return
        finally:
            os.close(control)
        raise LabkitError("no free loop device", "detach unused ones (losetup -D) and retry")

    def detach(self) -> None:
        """Detach the device (autoclear finishes at our close) and delete the file. Safe twice."""
        if self._fd >= 0:
            try:
                fcntl.ioctl(self._fd, LOOP_CLR_FD)
            except OSError:
                pass                              # already being cleared
            os.close(self._fd)
            self._fd = -1
        if self.path:
            for _ in range(200):                  # the kernel clears it asynchronously
                if not backing_file(self.path):
                    break
                time.sleep(0.01)
            self.path = ""
        try:
            os.unlink(self.file)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "LoopDevice":
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def labkit_loop_devices() -> list[str]:
    """/dev/loopN of every loop device whose backing file is labkit's."""
    found = []
    for name in sorted(os.listdir("/sys/block")):
        if name.startswith("loop") and backing_file(name).startswith(BACKING_DIR + "/"):
            found.append(f"/dev/{name}")
    return found


def remove_leftovers(dry_run: bool = False) -> list[str]:
    """Detach every labkit loop device and delete labkit's backing files (for
    `labkit cleanup`); with ``dry_run``, only list them."""
    if dry_run:
        files = sorted(os.listdir(BACKING_DIR)) if os.path.isdir(BACKING_DIR) else []
        return ([f"loop device {d}" for d in labkit_loop_devices()]
                + [f"file {os.path.join(BACKING_DIR, n)}" for n in files if n.startswith("labkit-")])
    removed = []
    for device in labkit_loop_devices():
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, LOOP_CLR_FD)
            removed.append(f"loop device {device}")
        except OSError:
            pass                                  # cleared meanwhile
        finally:
            os.close(fd)
    if os.path.isdir(BACKING_DIR):
        for name in sorted(os.listdir(BACKING_DIR)):
            if name.startswith("labkit-"):
                os.unlink(os.path.join(BACKING_DIR, name))
                removed.append(f"file {os.path.join(BACKING_DIR, name)}")
    return removed
