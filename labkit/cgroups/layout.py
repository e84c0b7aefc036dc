"""Where cgroups are: the one module that knows where each hierarchy is mounted.

Everything else in labkit asks this module (DESIGN.md: one fact, one place).
``layout = read()`` reads /proc/self/mountinfo once (labkit.mountinfo) and
answers a set of questions from that one snapshot; read again for a fresh one.

- ``layout.version("memory")`` -> "v1", "v2" or None. cgroups(7): a controller
  bound to a mounted v1 hierarchy is on v1; otherwise it is on v2 when the v2
  root's ``cgroup.controllers`` lists it (cgroup-v2.rst, "Enabling and
  disabling"). Kernel names: ``blkio`` and ``cpuacct`` on v1, ``io`` on v2.
- ``layout.v1_mount("devices")`` -> the devices hierarchy's mount point or None;
  ``layout.v2_mount`` -> the cgroup2 mount point or None (``/sys/fs/cgroup`` on
  pure v2, ``/sys/fs/cgroup/unified`` on a systemd hybrid host).
- ``layout.labkit_dir(hierarchy, name)`` -> ``<mount>/labkit/<name>``: where
  labkit's group is in that hierarchy.
- ``layout.directory(line)`` -> the host directory a ``/proc/PID/cgroup`` line
  refers to; ``layout.dirs_of(pid)`` does every line of a process.
- ``layout.labkit_groups()`` -> every directory under ``labkit/`` in every
  hierarchy, v1 and v2, deepest first (the order rmdir needs).

Paths, per the kernel: a mount's root field (mountinfo field 4) and the path
in /proc/PID/cgroup are both shown relative to the *reader's* cgroup
namespace root (cgroup_show_path and proc_cgroup_show in
kernel/cgroup/cgroup.c; cgroup_namespaces(7)). So the group at path P is
reachable through a mount of root R at mount point M as M + (P - R) when P is
R or below it, and through that mount not at all otherwise (a path starting
with ``/..`` is outside the reader's namespace). A hierarchy mounted twice
(a bind mount, a container's view) is used through a mount of its whole tree
(root ``/``) when there is one.

/proc/PID/cgroup lines (cgroups(7)): ``ID:controller,controller:/path`` for
a v1 hierarchy (a named one lists ``name=systemd``), ``0::/path`` for v2.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .. import mountinfo
from ..mountinfo import MountEntry

LABKIT = "labkit"   # the parent directory of every group labkit makes, in each hierarchy

# What cgroup1_show_options (kernel/cgroup/cgroup-v1.c) prints besides the
# controllers and ``name=``: the flags of a v1 hierarchy, not controllers.
V1_FLAGS = frozenset({"rw", "ro", "noprefix", "xattr", "cpuset_v2_mode", "favordynmods",
                      "clone_children"})


class Hierarchy(NamedTuple):
    """One mounted cgroup hierarchy: its version, where it is, what it serves.

    ``controllers``: for v1 the hierarchy's controllers and its ``name=``
    (as /proc/PID/cgroup lists them), for v2 the root's cgroup.controllers.
    ``root``: the mount's root field, the group mounted at ``mount_point``.
    """

    version: str
    mount_point: str
    root: str
    controllers: tuple[str, ...]

    def directory(self, path: str) -> str | None:
        """The directory of the group at ``path`` (as /proc/PID/cgroup shows
        it) through this mount, or None when the mount does not reach it."""
        root = self.root.rstrip("/")
        if path != (root or "/") and not path.startswith(root + "/"):
            return None
        rest = path[len(root):].strip("/")
        return os.path.join(self.mount_point, rest) if rest else self.mount_point


def v1_controllers(entry: MountEntry) -> tuple[str, ...]:
    """The controllers (and ``name=``) of a v1 cgroup mount, from its superblock options."""
    return tuple(o for o in entry.super_option_list()
                 if o not in V1_FLAGS and not o.startswith("release_agent="))


def _read_controllers(mount_point: str) -> tuple[str, ...]:
    try:
        with open(os.path.join(mount_point, "cgroup.controllers")) as f:
            return tuple(f.read().split())
    except OSError:
        return ()


class Layout:
    """The cgroup hierarchies of one mount table (see the module docstring)."""

    def __init__(self, entries: list[MountEntry],
                 v2_controllers: tuple[str, ...] | None = None) -> None:
        """``entries``: a mount table (mountinfo.read()). ``v2_controllers``: the
        v2 root's cgroup.controllers, read from the mount when not given."""
        self.v1: list[Hierarchy] = []
        self.v2: Hierarchy | None = None
        seen: dict[tuple[str, ...], int] = {}
        for e in entries:
            if e.fstype == "cgroup":
                h = Hierarchy("v1", e.mount_point, e.root, v1_controllers(e))
                key = tuple(sorted(h.controllers))
                if key not in seen:
                    seen[key] = len(self.v1)
                    self.v1.append(h)
                elif e.root == "/" and self.v1[seen[key]].root != "/":
                    self.v1[seen[key]] = h           # prefer the whole tree
            elif e.fstype == "cgroup2" and (self.v2 is None or (e.root == "/" and self.v2.root != "/")):
                self.v2 = Hierarchy("v2", e.mount_point, e.root, ())
        if self.v2 is not None:
            found = _read_controllers(self.v2.mount_point) if v2_controllers is None else v2_controllers
            self.v2 = Hierarchy("v2", self.v2.mount_point, self.v2.root, tuple(found))

    # --- which version, which mount -----------------------------------------

    @property
    def v2_mount(self) -> str | None:
        """The cgroup2 mount point, or None when no v2 hierarchy is mounted."""
        return self.v2.mount_point if self.v2 else None

    def v1_hierarchy(self, controller: str) -> Hierarchy | None:
        """The v1 hierarchy that has ``controller`` (or ``name=NAME``), or None."""
        return next((h for h in self.v1 if controller in h.controllers), None)

    def v1_mount(self, controller: str) -> str | None:
        """Where the v1 hierarchy of ``controller`` is mounted, or None."""
        h = self.v1_hierarchy(controller)
        return h.mount_point if h else None

    def version(self, controller: str) -> str | None:
        """"v1", "v2" or None (absent) for one controller, by its kernel name."""
        if self.v1_hierarchy(controller):
            return "v1"
        return "v2" if self.v2 and controller in self.v2.controllers else None

    def versions(self) -> dict[str, str]:
        """Every controller this host has -> "v1" or "v2" (``name=`` hierarchies excluded)."""
        found = {c: "v2" for c in (self.v2.controllers if self.v2 else ())}
        found.update({c: "v1" for h in self.v1 for c in h.controllers if "=" not in c})
        return found

    def hierarchies(self) -> list[Hierarchy]:
        """Every mounted hierarchy: v2 first, then v1 in mount order."""
        return ([self.v2] if self.v2 else []) + self.v1

    # --- labkit's groups ----------------------------------------------------

    def labkit_dir(self, hierarchy: Hierarchy, name: str = "") -> str:
        """``<mount>/labkit[/<name>]``: where labkit's group ``name`` is in ``hierarchy``."""
        return os.path.join(hierarchy.mount_point, LABKIT, name) if name else \
            os.path.join(hierarchy.mount_point, LABKIT)

    def labkit_groups(self) -> list[str]:
        """Every existing directory at or below ``labkit/`` in every hierarchy,
        v1 and v2, deepest first: the order rmdir needs (a group with child
        groups cannot be removed, cgroups(7))."""
        found: list[str] = []
        for h in self.hierarchies():
            top = self.labkit_dir(h)
            if os.path.isdir(top):
                found += [root for root, _, _ in os.walk(top)]
        return sorted(dict.fromkeys(found), key=lambda p: p.count("/"), reverse=True)

    # --- /proc/PID/cgroup ---------------------------------------------------

    def hierarchy_of(self, line: str) -> tuple[Hierarchy, str] | None:
        """(the hierarchy, the path) of one /proc/PID/cgroup line, or None when
        this mount table has no mount of that hierarchy."""
        _, controllers, path = line.rstrip("\n").split(":", 2)
        if controllers == "":
            return (self.v2, path) if self.v2 else None
        wanted = set(controllers.split(","))
        h = next((h for h in self.v1 if set(h.controllers) == wanted), None)
        return (h, path) if h else None

    def directory(self, line: str) -> str | None:
        """The host directory that one /proc/PID/cgroup line refers to, or None
        (hierarchy not mounted here, or the group outside the mount's root)."""
        found = self.hierarchy_of(line)
        return found[0].directory(found[1]) if found else None

    def dirs(self, lines: list[str]) -> list[tuple[Hierarchy, str]]:
        """(hierarchy, directory) of each /proc/PID/cgroup line this table reaches."""
        result = []
        for line in lines:
            found = self.hierarchy_of(line)
            directory = found[0].directory(found[1]) if found else None
            if found and directory is not None:
                result.append((found[0], directory))
        return result

    def dirs_of(self, pid: int | str) -> list[tuple[Hierarchy, str]]:
        """(hierarchy, directory) of each of ``pid``'s groups this table reaches."""
        return self.dirs(cgroup_lines(pid))

    def is_labkit(self, hierarchy: Hierarchy, directory: str) -> bool:
        """True when ``directory`` is a group below ``labkit/`` of ``hierarchy``."""
        return directory.startswith(self.labkit_dir(hierarchy) + "/")


def cgroup_lines(pid: int | str) -> list[str]:
    """The lines of /proc/PID/cgroup. For a task already exiting, a v1 hierarchy
    shows "/" instead of its group (proc_cgroup_show, kernel/cgroup/cgroup.c):
    read it while the process runs."""
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read().splitlines()


def read(pid: int | str = "self") -> Layout:
    """The cgroup layout of ``pid``'s mount table (default: the caller's), read now."""
    return Layout(mountinfo.read(pid))
