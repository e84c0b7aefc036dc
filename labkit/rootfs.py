"""The container's root filesystem: a directory tree that becomes its ``/``.

A root filesystem is nothing but files: a program to run, the libraries it
needs, /etc/passwd so that ``id`` has names to print, and empty directories
where the kernel's own filesystems (/proc, /sys, /dev) will be mounted. The
smallest useful one is a single static program, busybox, linked under the
names of its applets (``/bin/sh``, ``/bin/ls`` ...): busybox looks at argv[0]
to know which applet it is.

``build()`` makes that tree offline from the host's busybox-static, and is
idempotent. ``import_tarball()`` unpacks a root filesystem the user already has
(an Alpine minirootfs, a ``docker export``), refusing every entry that could
write outside the target directory or create a device: an absolute path, a
``..`` component, a device node, a link that points outside the root, or an
entry that goes through a link (the classic tar path-traversal attacks).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import TYPE_CHECKING, Callable

from .errors import LabkitError, UsageError

if TYPE_CHECKING:
    import tarfile

DEFAULT_ROOTFS = "/var/lib/labkit/rootfs"   # outside the repository, built on first use
BUSYBOX = "/bin/busybox"                    # Debian's busybox-static

# The empty directories a root filesystem needs, and their modes.
DIRECTORIES = {"bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
               "etc": 0o755, "root": 0o700, "home": 0o755, "proc": 0o555, "sys": 0o555,
               "dev": 0o755, "tmp": 0o1777, "run": 0o755, "var": 0o755}

# The few files programs expect in /etc (passwd(5), group(5), hostname(5)).
FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "labkit\n",
}

Progress = Callable[[str], None]


def _print_progress(line: str) -> None:
    """The default progress line, rewritten in place on a terminal's stderr
    (and erased by the empty line); nothing when stderr is not a terminal."""
    if sys.stderr.isatty():
        print(f"\rlabkit: {line}\033[K" if line else "\r\033[K", end="", file=sys.stderr, flush=True)


def is_rootfs(path: str) -> bool:
    """True if ``path`` holds a labkit-built root filesystem (busybox and its /etc)."""
    return all(os.path.lexists(os.path.join(path, p)) for p in ("bin/busybox", "bin/sh", "etc/passwd"))


def applets(busybox: str = BUSYBOX) -> list[str]:
    """The applet paths busybox installs, relative to / (``busybox --list-full``)."""
    if not os.access(busybox, os.X_OK):
        raise LabkitError(f"{busybox} not found: the rootfs is made from busybox-static",
                          "install it: apt-get install busybox-static")
    import subprocess       # here, not at the top: `labkit run` only needs a built rootfs

    out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.split() if line != "bin/busybox"]


def build(dest: str = DEFAULT_ROOTFS, progress: Progress | None = _print_progress,
          busybox: str = BUSYBOX) -> str:
    """Build (or complete) the busybox root filesystem at ``dest``; return ``dest``.

    A new ``dest`` is built in a sibling temporary directory and renamed into
    place (rename(2) is atomic), so a concurrent or interrupted build never
    leaves a half-made rootfs. An existing ``dest`` is completed in place:
    running it twice changes nothing.
    """
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise UsageError(f"{dest} exists and is not a directory", "give a directory path for the rootfs")
    names = applets(busybox)
    if os.path.isdir(dest):
        _populate(dest, names, busybox, progress)
    else:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = f"{dest}.tmp-{os.getpid()}"
        try:
            os.mkdir(tmp, 0o755)
            _populate(tmp, names, busybox, progress, shown=dest)
            os.rename(tmp, dest)
        except OSError as e:
            if not is_rootfs(dest):
                raise LabkitError(f"cannot build the rootfs in {dest}: {e.strerror}",
                                  "check that the parent directory is writable") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)   # someone else renamed first: theirs stays
    if progress:
        progress("")
    return dest


def _populate(root: str, names: list[str], busybox: str, progress: Progress | None,
              shown: str = "") -> None:
    """Create every directory, file and applet link that is missing under ``root``."""
    for d, mode in DIRECTORIES.items():
        path = os.path.join(root, d)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
    target = os.path.join(root, "bin/busybox")
    if not os.path.exists(target) or os.path.getsize(target) != os.path.getsize(busybox):
        shutil.copy2(busybox, target)
    for name, text in FILES.items():
        _write_if_changed(os.path.join(root, name), text)
    for i, name in enumerate(names, 1):
        link = os.path.join(root, name)
        if not (os.path.islink(link) and os.readlink(link) == "/bin/busybox"):
            if os.path.lexists(link):
                os.unlink(link)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)   # absolute: resolved inside the container's root
        if progress and (i % 32 == 0 or i == len(names)):
            progress(f"building rootfs {shown or root}: {i}/{len(names)} applets")


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(text)


def default_rootfs(progress: Progress | None = _print_progress) -> str:
    """The built-in busybox rootfs, built on first use."""
    if not is_rootfs(DEFAULT_ROOTFS):
        build(DEFAULT_ROOTFS, progress)
    return DEFAULT_ROOTFS


def check_rootfs(path: str) -> str:
    """Return the absolute ``path`` if it can be a root filesystem, else raise UsageError."""
    if not os.path.exists(path):
        raise UsageError(f"rootfs {path} does not exist",
                         "give an existing directory, or build one: labkit rootfs build DIR")
    if not os.path.isdir(path):
        raise UsageError(f"rootfs {path} is not a directory",
                         "give a directory (to use a tarball: labkit rootfs build DIR --from TARBALL)")
    return os.path.abspath(path)


# --- importing a tarball ---------------------------------------------------------------

def unsafe_reason(member: tarfile.TarInfo, links: set[str]) -> str | None:
    """Why extracting ``member`` could escape the root or make a device; None if safe.

    ``links`` holds the (normalised) names of the link entries seen so far: an
    entry below one of them would be written wherever that link points.
    """
    name = member.name
    if name.startswith("/"):
        return "absolute path"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "'..' in the path"
    if member.ischr() or member.isblk():
        return "device node"
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in links:
            return f"goes through the link {'/'.join(parts[:i])}"
    if member.issym():
        # The container resolves an absolute target from its own root, a
        # relative one from the link's directory: neither may climb above /.
        base = [] if member.linkname.startswith("/") else parts[:-1]
        if not _stays_inside(base, member.linkname):
            return f"symbolic link to {member.linkname}, outside the root"
    if member.islnk():
        if member.linkname.startswith("/") or not _stays_inside([], member.linkname):
            return f"hard link to {member.linkname}, outside the root"
    return None


def _stays_inside(base: list[str], target: str) -> bool:
    depth = len(base)
    for p in target.split("/"):
        if p == "..":
            depth -= 1
            if depth < 0:
                return False
        elif p not in ("", "."):
            depth += 1
    return True


def import_tarball(tarball: str, dest: str, progress: Progress | None = _print_progress) -> str:
    """Unpack the root filesystem ``tarball`` into the new directory ``dest``.

    Every entry is checked before anything is written; one unsafe entry
    refuses the whole tarball and nothing is left behind.
    """
    import tarfile          # here, not at the top: `labkit run` never imports a tarball

    dest = os.path.abspath(dest)
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise UsageError(f"{dest} already exists and is not an empty directory",
                         "import into a new (or empty) directory")
    try:
        tar = tarfile.open(tarball)
    except (OSError, tarfile.TarError) as e:
        raise UsageError(f"cannot read tarball {tarball}: {e}",
                         "give a .tar, .tar.gz or .tar.xz root filesystem") from None
    with tar:
        members = tar.getmembers()
        links: set[str] = set()
        for m in members:
            reason = unsafe_reason(m, links)
            if reason:
                raise UsageError(f"unsafe entry {m.name!r} in {tarball}: {reason}",
                                 "refusing the whole tarball; use a trusted rootfs tarball")
            if m.issym() or m.islnk():
                links.add("/".join(p for p in m.name.split("/") if p not in ("", ".")))
        tmp = f"{dest}.tmp-{os.getpid()}"
        try:
            os.makedirs(tmp)
            # Every member was checked above. Python 3.11.4+ takes an extraction filter
            # (PEP 706) and warns from 3.12 without one; Debian 12's 3.11.2 has none,
            # and extracts as "fully_trusted" does.
            trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            for i, m in enumerate(members, 1):
                tar.extract(m, tmp, numeric_owner=True, **trusted)
                if progress and (i % 100 == 0 or i == len(members)):
                    progress(f"importing {tarball}: {i}/{len(members)} entries")
            if os.path.isdir(dest):
                os.rmdir(dest)
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress("")
    return dest
