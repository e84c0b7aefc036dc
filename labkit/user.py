"""User namespace: root inside the container, an unprivileged user outside.

user_namespaces(7): a user namespace has its own user and group IDs and its
own capabilities. The process that creates one gets every capability *in it*
(CAP_SYS_ADMIN included), and those capabilities give power only over the
objects the namespace owns: the UTS, mount, network... namespaces created with
it, never the host's clock, disks or kernel modules, which belong to the
initial user namespace.

An ID inside means nothing until it is mapped to an ID outside. The maps are
the files /proc/PID/uid_map and /proc/PID/gid_map, one line per range:
``INSIDE OUTSIDE COUNT``. The kernel's rules for writing them:

- each file can be written once, in one write(2), with at most 340 lines;
- ranges may not overlap, neither inside nor outside;
- the writer must be in the parent user namespace (or the namespace itself)
  and have CAP_SETUID (CAP_SETGID) over it; without CAP_SETUID in the parent
  namespace the writer may map only one ID: its own effective UID (GID);
- an unprivileged writer of gid_map must first write ``deny`` to
  /proc/PID/setgroups, so the process can never drop a group it was denied by.

Until the map is written the process's IDs show as the overflow ID 65534
(nobody); afterwards, it calls setresuid(2)/setresgid(2) to become the ID it
should have inside. Files it creates carry the *outside* ID on disk.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

from . import kernel
from .errors import KernelError, UsageError
from .spawn import Primitive, die_with_parent

ID_MAX = 4294967294            # (uid_t)-1 is "no ID", so the largest ID is one less
MAP_LINES_MAX = 340            # user_namespaces(7), since Linux 4.15
SUBORDINATE_START = 100000     # the host range root inside maps to, as /etc/subuid's first range
SUBORDINATE_COUNT = 65536


class IdMap(NamedTuple):
    """One line of a uid_map or gid_map: COUNT IDs from INSIDE are OUTSIDE on the host."""

    inside: int
    outside: int
    count: int

    def __str__(self) -> str:
        return f"{self.inside}:{self.outside}:{self.count}"


def parse_map(spec: str, what: str = "--uid-map") -> IdMap:
    """Parse ``INSIDE:OUTSIDE:COUNT`` (the --uid-map/--gid-map syntax)."""
    parts = spec.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise UsageError(f"{what} {spec!r} is malformed",
                         "write INSIDE:OUTSIDE:COUNT with three numbers, e.g. 0:100000:65536")
    return IdMap(*(int(p) for p in parts))


def default_map(own_id: int) -> list[IdMap]:
    """Root inside is 100000 outside (65536 IDs) when labkit runs as root;
    without root, the one ID an unprivileged writer may map is its own."""
    if os.geteuid() == 0:
        return [IdMap(0, SUBORDINATE_START, SUBORDINATE_COUNT)]
    return [IdMap(0, own_id, 1)]


def _overlaps(ranges: list[tuple[int, int]]) -> bool:
    ordered = sorted(ranges)
    return any(a_start + a_count > b_start
               for (a_start, a_count), (b_start, _) in zip(ordered, ordered[1:]))


def check_maps(maps: Sequence[IdMap], what: str, own_id: int) -> list[IdMap]:
    """Return ``maps`` if the kernel would accept them from us, else raise UsageError.

    On top of the kernel's rules, the host's root (0) is never a target: with a
    user namespace, what the container owns on the host must not be root's.
    """
    maps = list(maps)
    if not maps or len(maps) > MAP_LINES_MAX:
        raise UsageError(f"{what} has {len(maps)} ranges",
                         f"give 1 to {MAP_LINES_MAX} ranges (user_namespaces(7))")
    for m in maps:
        if m.count < 1 or m.inside + m.count - 1 > ID_MAX or m.outside + m.count - 1 > ID_MAX:
            raise UsageError(f"{what} {m} is outside the range of IDs",
                             f"COUNT must be at least 1 and the last ID at most {ID_MAX}")
        if m.outside == 0:
            raise UsageError(f"{what} {m} maps the host's root (0) into the container",
                             f"map to an unprivileged range, e.g. 0:{SUBORDINATE_START}:{SUBORDINATE_COUNT}")
    for side in ("inside", "outside"):
        if _overlaps([(getattr(m, side), m.count) for m in maps]):
            raise UsageError(f"{what} ranges overlap on the {side}",
                             "give ranges that share no ID (user_namespaces(7))")
    if os.geteuid() != 0 and maps != [IdMap(maps[0].inside, own_id, 1)]:
        raise UsageError(f"{what} {','.join(map(str, maps))} needs host root",
                         f"without root you may map only your own ID: --{what.split()[0]}-map 0:{own_id}:1")
    return maps


def read_map(pid: int | str, kind: str = "uid") -> list[IdMap]:
    """The uid_map or gid_map of process ``pid`` as the reader's namespace sees it."""
    with open(f"/proc/{pid}/{kind}_map") as f:
        return [IdMap(*(int(n) for n in line.split())) for line in f]


def to_host(maps: Sequence[IdMap], inside: int) -> int:
    """The ID outside that ID ``inside`` is; the overflow ID 65534 when unmapped."""
    for m in maps:
        if m.inside <= inside < m.inside + m.count:
            return m.outside + inside - m.inside
    return 65534


def _write(path: str, text: str) -> None:
    """One write(2) of the whole text, as the kernel demands for the map files."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise KernelError(f"writing {path}", e.errno or 0, e.strerror or "") from None


class UserNamespace(Primitive):
    """A new user namespace whose maps the parent writes in join().

    In enter() the child becomes the lowest mapped ID inside (0: root) with
    setresgid(2) and setresuid(2); it keeps every capability of its namespace.
    """

    name = "user"
    flags = kernel.CLONE_NEWUSER

    def __init__(self, uid_map: Sequence[IdMap] | None = None,
                 gid_map: Sequence[IdMap] | None = None) -> None:
        self.uid_map = check_maps(uid_map or default_map(os.geteuid()), "uid map", os.geteuid())
        self.gid_map = check_maps(gid_map or default_map(os.getegid()), "gid map", os.getegid())
        self.uid = min(m.inside for m in self.uid_map)
        self.gid = min(m.inside for m in self.gid_map)
        # Only a writer with CAP_SETGID in the parent namespace may leave setgroups(2) allowed.
        self.setgroups = "allow" if os.geteuid() == 0 else "deny"

    def join(self, pid: int) -> None:
        _write(f"/proc/{pid}/uid_map", "".join(f"{m.inside} {m.outside} {m.count}\n" for m in self.uid_map))
        _write(f"/proc/{pid}/setgroups", self.setgroups)
        _write(f"/proc/{pid}/gid_map", "".join(f"{m.inside} {m.outside} {m.count}\n" for m in self.gid_map))

    def enter(self) -> None:
        if self.setgroups == "allow":
            os.setgroups([])                  # drop the host's supplementary groups
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)
        # A change of effective UID clears the parent-death signal (kernel/cred.c
        # commit_creds(), prctl(2) PR_SET_PDEATHSIG): arm it again, and check the parent.
        die_with_parent()
