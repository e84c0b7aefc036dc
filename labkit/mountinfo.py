"""The mount table, read once from /proc/PID/mountinfo: labkit's only reader of it.

proc(5), /proc/PID/mountinfo: one line per mount, as seen from the reader's
mount namespace (and root)::

    36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2) (3)   (4)   (5)          (6)      (7)   (8) (9)    (10)         (11)

(1) mount ID, (2) parent ID, (3) major:minor of st_dev, (4) root: the path
inside the filesystem that is mounted here, (5) mount point, relative to the
reader's root, (6) per-mount options, (7) zero or more optional fields
(``shared:N``, ``master:N``, ``propagate_from:N``, ``unbindable``), (8) a
hyphen that ends them, (9) filesystem type, (10) source, (11) per-superblock
options.

Paths and the source are escaped by the kernel (fs/proc_namespace.c,
``seq_path_root``/``mangle``: ``show_mountinfo``): a space, tab, newline and
backslash are written as the octal escapes ``\\040``, ``\\011``, ``\\012`` and
``\\134``, so that a line splits on whitespace. ``unescape`` undoes that; a
reader that skips it gets ``/mnt/my\\040disk`` for ``/mnt/my disk``.
/proc/mounts (``show_vfsmnt``) has the same escapes but no root field, no
optional fields and no IDs, so labkit reads mountinfo only.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    r"""Undo the kernel's octal escapes: ``/a\040b`` -> ``/a b`` (any ``\NNN``)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


class MountEntry(NamedTuple):
    """One line of /proc/PID/mountinfo (proc(5)), with its paths unescaped."""

    mount_id: int
    parent_id: int
    root: str            # the path inside the filesystem that is mounted here
    mount_point: str     # where, relative to the reader's root
    options: str         # per-mount options: rw/ro, nosuid ...
    propagation: str     # optional fields: shared:N, master:N, or "private"
    fstype: str
    source: str
    devno: str = ""          # "major:minor" of the filesystem (st_dev)
    super_options: str = ""  # per-superblock options: for a cgroup v1 mount, its controllers

    def super_option_list(self) -> list[str]:
        """The per-superblock options, split on commas."""
        return [o for o in self.super_options.split(",") if o]


def parse_line(line: str) -> MountEntry:
    """One mountinfo line -> MountEntry. The optional fields end at the field
    ``-`` (proc(5)): their number varies, so the fields after them are counted
    from there, not from the start."""
    fields = line.rstrip("\n").split(" ")
    sep = fields.index("-", 6)
    fstype, source, super_options = (fields[sep + 1:sep + 4] + ["", ""])[:3]
    return MountEntry(int(fields[0]), int(fields[1]), unescape(fields[3]), unescape(fields[4]),
                      fields[5], " ".join(fields[6:sep]) or "private", unescape(fstype),
                      unescape(source), fields[2], super_options)


def parse(text: str) -> list[MountEntry]:
    """Every line of a mountinfo text, in the kernel's order (parents before children)."""
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def read(pid: int | str = "self") -> list[MountEntry]:
    """The mount table of the mount namespace of ``pid``, as that process sees it."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return parse(f.read())


def mount_points(entries: list[MountEntry], fstype: str) -> list[str]:
    """The mount points of every mount of filesystem type ``fstype`` (e.g. "tracefs")."""
    return [e.mount_point for e in entries if e.fstype == fstype]


def under(entries: list[MountEntry], prefix: str) -> list[str]:
    """Mount points at or below ``prefix``, deepest first (the order to unmount)."""
    top = prefix.rstrip("/") or "/"
    inside = {e.mount_point for e in entries
              if e.mount_point == top or e.mount_point.startswith(top.rstrip("/") + "/")}
    return sorted(inside, key=lambda p: p.count("/"), reverse=True)
