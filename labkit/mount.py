"""Mount namespace: the container's own mount table, and a new root in it.

mount_namespaces(7): a new mount namespace starts as a copy of its parent's
mount table; mounts made afterwards in one are not seen in the other, unless
propagation carries them. Propagation is per mount: a *shared* mount (systemd
makes / shared) passes its mount events to its peers, also in the host's
namespace. So the first thing a container does is make every mount *private*
(``mount --make-rprivate /``): from then on its mounts stay its own.

The container's files come from an image directory (see rootfs.py). With
``overlay`` the image is the read-only lower layer of an overlayfs, and each
container gets its own upper and work directories under /run/labkit: writes
go to the upper layer (copy-up), so two containers started from one image
start identical and never see each other's writes, and the image never
changes (https://docs.kernel.org/filesystems/overlayfs.html).

Then, before the switch, the kernel's own filesystems are mounted inside the
new root, as runc does: a fresh /proc (it shows the PID namespace of the
process that mounts it, proc(5)), a minimal /dev on tmpfs with only the safe
devices, /sys read-only, and runc's masked and read-only /proc paths. Last,
pivot_root(2) makes the new root the namespace's root mount and moves the old
one aside, where it is unmounted and its directory removed: unlike chroot(2),
which only changes one process's view of "/", nothing of the host's tree is
left in the namespace to walk back to. (A process that shares the host's PID
namespace could still reach the host's root through /proc/1/root: the mount
namespace goes with a PID namespace.)
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from typing import NamedTuple

from . import kernel
from .errors import UsageError
from .mountinfo import MountEntry, read as read_mountinfo
from .spawn import Primitive

RUN_DIR = "/run/labkit"     # per-container overlay upper/work directories live here (root)


def run_dir() -> str:
    """Where this user's overlay directories go: /run/labkit for root; for a
    rootless user $XDG_RUNTIME_DIR/labkit, else /tmp/labkit-UID (made 0700 and
    checked to be the user's own directory, not a link someone else planted)."""
    uid = os.geteuid()
    if uid == 0:
        return RUN_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = runtime if runtime and os.access(runtime, os.W_OK) else "/tmp"
    path = os.path.join(base, "labkit" if base == runtime else f"labkit-{uid}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        raise UsageError(f"{path} is not a directory of yours",
                         "remove it, or set XDG_RUNTIME_DIR to a directory you own")
    return path
OLD_ROOT = "/.labkit-oldroot"

# The devices a container gets in its /dev (major, minor), as runc's defaults;
# see Documentation/admin-guide/devices.txt.
DEVICES: dict[str, tuple[int, int]] = {
    "null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
    "urandom": (1, 9), "tty": (5, 0),
}
DEV_LINKS: dict[str, str] = {
    "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx",
}

# runc's default masked paths (hidden: /dev/null over a file, an empty
# read-only tmpfs over a directory) and read-only paths (runtime-spec defaults).
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# The kernel filesystems mounted inside the new root:
# target, fstype, flags, data (mount(2)).
KERNEL_MOUNTS: tuple[tuple[str, str, int, str | None], ...] = (
    ("/proc", "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC, None),
    ("/dev", "tmpfs", kernel.MS_NOSUID | kernel.MS_STRICTATIME, "mode=755,size=65536k"),
    ("/dev/pts", "devpts", kernel.MS_NOSUID | kernel.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"),
    ("/dev/shm", "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC, "mode=1777,size=65536k"),
)
PROC_FLAGS = kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC
SYS_FLAGS = kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC


class Volume(NamedTuple):
    """A host path bind-mounted into the container (``--volume HOST:CTR[:ro]``)."""

    source: str      # absolute host path
    target: str      # absolute path inside the container
    readonly: bool


def parse_volume(spec: str) -> Volume:
    """Parse ``HOST:CTR[:ro|rw]``; raise UsageError for anything else."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1] or \
            (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise UsageError(f"malformed volume {spec!r}", "write it HOST:CTR or HOST:CTR:ro")
    return volume(parts[0], parts[1], len(parts) == 3 and parts[2] == "ro")


def volume(source: str, target: str, readonly: bool = False) -> Volume:
    """A checked Volume: the host path exists, the container path is absolute and plain."""
    if not os.path.exists(source):
        raise UsageError(f"volume source {source} does not exist on the host",
                         "create it first, or fix the path")
    return Volume(os.path.abspath(source), check_target(target), readonly)


def check_target(target: str) -> str:
    """Return the normalised ``target`` if it is a plain absolute path other than /."""
    if not target.startswith("/"):
        raise UsageError(f"volume target {target!r} is not an absolute path",
                         "give the path inside the container from /, e.g. /data")
    if ".." in target.split("/"):
        raise UsageError(f"volume target {target!r} contains '..'",
                         "give a plain absolute path inside the container")
    target = os.path.normpath(target)
    if target == "/":
        raise UsageError("a mount cannot replace the container's /", "use --rootfs for that")
    return target


class MountNamespace(Primitive):
    """A new mount namespace whose root is ``rootfs`` (an overlay of it by default).

    ``volumes`` are bind-mounted, ``tmpfs`` paths get an empty tmpfs. After
    pivot_root(2), ``workdir`` is made if missing (inside the new root, so a
    link in the image resolves there) and becomes the working directory; then,
    with ``read_only``, the root mount turns read-only: only that mount (a
    remount's flags are per mount, mount(2)), so /proc, /dev, /sys, the
    volumes and the tmpfs mounts stay as they are, and writes to the rest fail
    with EROFS. On the host, ``upper`` is the container's writable layer (None
    without overlay).
    With a user namespace, ``owner`` is the host (uid, gid) of its root: the
    upper layer must belong to it, or overlayfs cannot write there.
    """

    name = "mount"
    flags = kernel.CLONE_NEWNS

    def __init__(self, rootfs: str, volumes: tuple[Volume, ...] | list[Volume] = (),
                 tmpfs: tuple[str, ...] | list[str] = (), overlay: bool = True,
                 owner: tuple[int, int] | None = None, read_only: bool = False,
                 workdir: str | None = None) -> None:
        if not os.path.isdir(rootfs):
            raise UsageError(f"rootfs {rootfs} is not a directory",
                             "give a directory, or build one: labkit rootfs build DIR")
        self.rootfs = os.path.abspath(rootfs)
        self.volumes = list(volumes)
        self.tmpfs = [check_target(t) for t in tmpfs]
        self.overlay = overlay
        self.owner = owner
        self.read_only = read_only
        self.workdir = workdir or "/"
        self.dir: str | None = None
        self.upper: str | None = None

    def prepare(self) -> None:
        """Make the per-container overlay directories (and compute every path
        now: the child only makes syscalls)."""
        self.new_root = self.rootfs
        if self.overlay:
            base = run_dir()
            if base == RUN_DIR:
                os.makedirs(RUN_DIR, exist_ok=True)
            self.dir = os.path.join(base, f"mnt-{os.urandom(4).hex()}")
            self.upper, work = os.path.join(self.dir, "upper"), os.path.join(self.dir, "work")
            self.new_root = os.path.join(self.dir, "merged")
            try:
                for d in (self.dir, self.upper, work, self.new_root):
                    os.mkdir(d, 0o755)
                    if self.owner is not None:
                        os.chown(d, *self.owner)
            except BaseException:     # also an interrupt: spawn releases only
                self.release()        # the primitives whose prepare() returned
                raise
            self.overlay_data = f"lowerdir={self.rootfs},upperdir={self.upper},workdir={work}"
        r = self.new_root
        self.kernel_mounts = [(r + t, fs, fl, data) for t, fs, fl, data in KERNEL_MOUNTS]
        self.sys_target = r + "/sys"
        self.devices = [(f"{r}/dev/{n}", os.makedev(*nums), f"/dev/{n}") for n, nums in DEVICES.items()]
        self.dev_links = [(target, f"{r}/dev/{n}") for n, target in DEV_LINKS.items()]
        self.binds = [(v.source, r + v.target, v.readonly, os.path.isdir(v.source))
                      for v in self.volumes]
        self.tmpfs_targets = [r + t for t in self.tmpfs]
        self.masked = [r + p for p in MASKED_PATHS]
        self.dev_null = r + "/dev/null"
        self.readonly = [r + p for p in READONLY_PATHS]

    def enter(self) -> None:
        # 1. Our mounts must not propagate to the host (nor the host's to us).
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
        # 2. The new root must be a mount point for pivot_root(2).
        if self.overlay:
            kernel.mount("overlay", self.new_root, "overlay", 0, self.overlay_data)
        else:
            kernel.mount(self.rootfs, self.new_root, None, kernel.MS_BIND | kernel.MS_REC)
        # 3. The kernel's filesystems, a minimal /dev, tmpfs and volumes.
        for target, fstype, flags, data in self.kernel_mounts:
            _refuse_links(self.new_root, target)
            os.makedirs(target, exist_ok=True)
            kernel.mount(fstype, target, fstype, flags, data)
        _mount_sys(self.sys_target)
        for path, dev, host_path in self.devices:
            _make_device(path, dev, host_path)
        for target, link in self.dev_links:
            os.symlink(target, link)
        for target in self.tmpfs_targets:
            _refuse_links(self.new_root, target)
            os.makedirs(target, exist_ok=True)
            kernel.mount("tmpfs", target, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "mode=1777")
        for source, target, readonly, is_dir in self.binds:
            _refuse_links(self.new_root, target)
            _make_mount_point(target, is_dir)
            _bind(source, target, readonly)
        # 4. runc's masked and read-only paths of /proc and /sys.
        for path in self.masked:
            _mask(path, self.dev_null)
        for path in self.readonly:
            if os.path.exists(path):
                _bind(path, path, readonly=True, flags=PROC_FLAGS)
        # 5. Switch roots; unmount the old root and remove its directory.
        os.chdir(self.new_root)
        try:
            os.mkdir(self.new_root + OLD_ROOT, 0o700)
        except FileExistsError:
            pass
        kernel.pivot_root(self.new_root, self.new_root + OLD_ROOT)
        os.chdir("/")
        kernel.umount2(OLD_ROOT, kernel.MNT_DETACH)
        os.rmdir(OLD_ROOT)
        # 6. The working directory (as docker, made if missing), then the read-only root.
        os.makedirs(self.workdir, exist_ok=True)
        os.chdir(self.workdir)
        if self.read_only:
            _remount_readonly("/")

    def release(self) -> None:
        """Remove the container's upper and work directories. The mounts went
        away with the namespace: they were never in the host's table."""
        if self.dir is not None and os.path.isdir(self.dir):
            # overlayfs makes work/work with mode 000: only root could enter it,
            # so a rootless user first gives its own directories back to itself.
            for parent, dirs, _ in os.walk(self.dir):
                for d in dirs:
                    if not os.path.islink(os.path.join(parent, d)):
                        os.chmod(os.path.join(parent, d), 0o700)
            shutil.rmtree(self.dir)
        self.dir = None


class WorkingDirectory(Primitive):
    """chdir(2) to ``path`` in enter(): the working directory of ``labkit exec``
    (the container's), and of a container without a mount namespace, whose
    directory must exist (labkit makes nothing in the host's tree)."""

    name = "workdir"

    def __init__(self, path: str) -> None:
        self.path = path

    def enter(self) -> None:
        os.chdir(self.path)


def _refuse_links(root: str, target: str) -> None:
    """Refuse a mount point under ``root`` that is reached through a symbolic link.

    Before pivot_root, a link in the image is resolved against the host's root
    (an absolute one) or may climb out with ``..``: following it would create
    directories and mounts in the host's tree. runc resolves such paths inside
    the root instead; labkit refuses them (ELOOP).
    """
    path = root
    for part in target[len(root):].split("/"):
        if part:
            path = f"{path}/{part}"
            if os.path.islink(path):
                raise OSError(errno.ELOOP, f"{path[len(root):]}: a symbolic link on the way to a mount point")


def _mount_sys(target: str) -> None:
    """A read-only sysfs at ``target``.

    A new sysfs needs CAP_SYS_ADMIN over the network namespace it shows
    (sysfs(5) shows its devices): in a user namespace without a network
    namespace of its own that is EPERM, and the host's /sys is bind-mounted
    read-only instead, as runc does for rootless containers.
    """
    os.makedirs(target, exist_ok=True)
    try:
        kernel.mount("sysfs", target, "sysfs", SYS_FLAGS)
    except PermissionError:
        _bind("/sys", target, readonly=True, flags=SYS_FLAGS & ~kernel.MS_RDONLY)


def _make_device(path: str, dev: int, host_path: str) -> None:
    """Create the character device ``dev`` at ``path``.

    mknod(2) of a device needs CAP_MKNOD in the initial user namespace: in a
    user namespace it fails with EPERM, so (as runc does) the host's device
    node is bind-mounted onto an empty file instead.
    """
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, dev)
        os.chmod(path, 0o666)                   # mknod's mode is filtered by the umask
    except PermissionError:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666))
        kernel.mount(host_path, path, None, kernel.MS_BIND)


def _make_mount_point(path: str, is_dir: bool) -> None:
    """A bind mount needs a target of the same kind: a directory or a file."""
    if is_dir:
        os.makedirs(path, exist_ok=True)
    elif not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


# statvfs(3)'s f_flag bits -> the mount(2) flags that set them.
_MOUNT_FLAGS = {os.ST_NOSUID: kernel.MS_NOSUID, os.ST_NODEV: kernel.MS_NODEV,
                os.ST_NOEXEC: kernel.MS_NOEXEC, os.ST_NOATIME: kernel.MS_NOATIME,
                os.ST_NODIRATIME: kernel.MS_NODIRATIME, os.ST_RELATIME: kernel.MS_RELATIME}


def _bind(source: str, target: str, readonly: bool, flags: int = 0) -> None:
    """Bind-mount ``source`` at ``target``; read-only takes a second call.

    mount(2): MS_RDONLY is ignored on the first MS_BIND call; a bind mount is
    made read-only by remounting it with MS_REMOUNT | MS_BIND | MS_RDONLY
    (which applies to that one mount, not to mounts below it). That remount sets
    the mount's flags to exactly those given, so it repeats the ones the bind
    inherited (nosuid, nodev, noexec, the atime flags): in a user namespace the
    kernel refuses to clear them with EPERM, since they were locked when the
    mount was copied into a less privileged mount namespace (mount(2), EPERM;
    fs/namespace.c, can_change_locked_flags). Debian 13's /tmp is such a mount.
    """
    kernel.mount(source, target, None, kernel.MS_BIND | kernel.MS_REC)
    if readonly:
        _remount_readonly(target, flags)


def _remount_readonly(target: str, flags: int = 0) -> None:
    """Make the mount at ``target`` read-only, keeping the flags it has (``_bind``)."""
    inherited = os.statvfs(target).f_flag
    kept = sum(ms for st, ms in _MOUNT_FLAGS.items() if inherited & st)
    kernel.mount(None, target, None, kernel.MS_BIND | kernel.MS_REMOUNT | kernel.MS_RDONLY | kept | flags)


def _mask(path: str, dev_null: str) -> None:
    """Hide ``path``: an empty read-only tmpfs over a directory, the container's
    /dev/null over a file."""
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        kernel.mount("tmpfs", path, "tmpfs", kernel.MS_RDONLY)
    else:
        kernel.mount(dev_null, path, None, kernel.MS_BIND)


def mountinfo(pid: int | str = "self") -> list[MountEntry]:
    """The mount table of the mount namespace of ``pid``, as that process sees it
    (labkit.mountinfo: the one reader of /proc/PID/mountinfo, escapes decoded)."""
    return read_mountinfo(pid)
