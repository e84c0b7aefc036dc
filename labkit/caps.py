"""Capabilities: root's power, split into named pieces the kernel checks one by one.

capabilities(7): every privileged operation checks one capability (settimeofday
checks CAP_SYS_TIME, sethostname CAP_SYS_ADMIN, init_module CAP_SYS_MODULE) in
a given user namespace. Each thread has five sets, shown in /proc/PID/status:

- effective (CapEff): what the kernel checks now;
- permitted (CapPrm): the limit of effective (a process may lower, not raise it);
- inheritable (CapInh): kept across execve(2) only if the file allows it too;
- bounding (CapBnd): the limit of what any execve(2) can ever grant, setuid-root
  programs included; prctl(PR_CAPBSET_DROP) removes one, and none comes back;
- ambient (CapAmb): kept across execve(2) of a non-setuid program (only caps in
  both permitted and inheritable).

After execve(2) a root process's permitted set is its bounding set (plus its
inheritable). So dropping from the bounding set is what makes a drop stick;
and no_new_privs (prctl(PR_SET_NO_NEW_PRIVS)) makes execve(2) ignore setuid
bits and file capabilities altogether, for this process and all its children.
"""

from __future__ import annotations

import os
from typing import Iterable, NamedTuple

from . import kernel
from .errors import UsageError
from .spawn import Primitive, die_with_parent

# Capability numbers are indexes in this tuple (kernel.py holds it: <linux/capability.h>).
CAPABILITIES = kernel.CAPABILITIES

# What Docker leaves a container by default (moby's oci/caps/defaults.go lists these 14).
DOCKER_DEFAULT = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

# The five sets, by the name of their line in /proc/PID/status (proc(5)).
STATUS_LINES = {"CapInh": "inheritable", "CapPrm": "permitted", "CapEff": "effective",
                "CapBnd": "bounding", "CapAmb": "ambient"}


class CapSets(NamedTuple):
    """The five capability sets of a thread, as bit masks (bit N = capability N)."""

    inheritable: int
    permitted: int
    effective: int
    bounding: int
    ambient: int


def last_cap() -> int:
    """The highest capability number this kernel knows (/proc/sys/kernel/cap_last_cap)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def read(pid: int | str = "self") -> CapSets:
    """The five capability sets of process ``pid``, from /proc/PID/status."""
    status = kernel.proc_status(pid)
    return CapSets(**{field: int(status[line], 16) for line, field in STATUS_LINES.items()})


def no_new_privs(pid: int | str = "self") -> bool:
    """Whether process ``pid`` has no_new_privs set (the NoNewPrivs line of /proc/PID/status)."""
    return kernel.proc_status(pid).get("NoNewPrivs") == "1"


def decode(mask: int) -> list[str]:
    """The names of the capabilities whose bits are set in ``mask``."""
    return [name for number, name in enumerate(CAPABILITIES) if mask >> number & 1]


def canonical(name: str) -> str:
    """``sys_admin``, ``SYS_ADMIN`` or ``CAP_SYS_ADMIN`` -> ``CAP_SYS_ADMIN``; UsageError if unknown."""
    upper = name.strip().upper()
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in CAPABILITIES:
        raise UsageError(f"unknown capability {name!r}",
                         "use a name from capabilities(7), e.g. NET_ADMIN or CAP_SYS_TIME")
    return full


def mask_of(names: Iterable[str]) -> int:
    """The bit mask of capabilities ``names``."""
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES.index(canonical(name))
    return mask


def resolve(add: Iterable[str] = (), drop: Iterable[str] = (),
            base: Iterable[str] = DOCKER_DEFAULT) -> list[str]:
    """The capabilities a container keeps: ``base`` plus ``add`` minus ``drop``.

    As in ``docker run``: ``ALL`` in ``add`` starts from every capability, ``ALL``
    in ``drop`` from none (then ``add`` is what is kept).
    """
    add_all = any(n.upper() == "ALL" for n in add)
    drop_all = any(n.upper() == "ALL" for n in drop)
    added = {canonical(n) for n in add if n.upper() != "ALL"}
    dropped = {canonical(n) for n in drop if n.upper() != "ALL"}
    if added & dropped:
        raise UsageError(f"{', '.join(sorted(added & dropped))} both added and dropped",
                         "name each capability in --cap-add or in --cap-drop, not both")
    if add_all:
        kept = set(CAPABILITIES) - dropped
    elif drop_all:
        kept = added
    else:
        kept = ({canonical(n) for n in base} | added) - dropped
    return [name for name in CAPABILITIES if name in kept]


class Capabilities(Primitive):
    """Drop every capability but ``keep`` from all five sets, then set no_new_privs.

    In enter(), in this order (each step needs what the next one removes):
    prctl(PR_CAPBSET_DROP) each capability not kept (needs CAP_SETPCAP); with
    ``user`` (uid, gid), setgroups(2) to none (needs CAP_SETGID; skipped with
    ``setgroups=False``, where the user namespace denies it), setresgid(2)
    (CAP_SETGID) and setresuid(2) (CAP_SETUID); capset(2) permitted and
    effective to ``keep``; clear the ambient set; prctl(PR_SET_NO_NEW_PRIVS).
    With ``ambient``, the kept capabilities are also raised in the inheritable
    and ambient sets, so that a non-root program keeps them across execve(2).
    Run it after every other primitive's enter().

    The user switch is the kernel's, capabilities(7), "Effect of user ID changes
    on capabilities": when a process whose real, effective or saved UID was 0
    changes so that all three are nonzero, the kernel clears its permitted,
    effective and ambient sets (unless SECBIT_KEEP_CAPS, which labkit leaves
    off). So a non-root ``user`` has no capability left, as with ``docker run
    -u``; only the bounding set, the limit for what an execve(2) could grant,
    keeps ``keep`` (and no_new_privs closes that door too).
    """

    name = "caps"
    flags = 0

    def __init__(self, keep: Iterable[str] = DOCKER_DEFAULT, *, ambient: bool = False,
                 set_no_new_privs: bool = True, user: tuple[int, int] | None = None,
                 setgroups: bool = True) -> None:
        self.keep = mask_of(keep)
        self.drop_bounding = [n for n in range(last_cap() + 1) if not self.keep >> n & 1]
        self.ambient = [n for n in range(len(CAPABILITIES)) if ambient and self.keep >> n & 1]
        self.set_no_new_privs = set_no_new_privs
        self.user = user
        self.setgroups = setgroups

    def enter(self) -> None:
        for number in self.drop_bounding:
            kernel.prctl(kernel.PR_CAPBSET_DROP, number)
        if self.user is not None:
            uid, gid = self.user
            if self.setgroups:
                os.setgroups([])                   # the primary group alone
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            # The new UID cleared the parent-death signal (kernel/cred.c commit_creds(),
            # prctl(2) PR_SET_PDEATHSIG): arm it again, and check the parent.
            die_with_parent()
        _, permitted, _ = kernel.capget()
        kept = self.keep & permitted                  # capset(2) can only lower permitted
        kernel.capset(kept, kept, kept if self.ambient else 0)
        kernel.prctl(kernel.PR_CAP_AMBIENT, kernel.PR_CAP_AMBIENT_CLEAR_ALL)
        for number in self.ambient:
            if kept >> number & 1:
                kernel.prctl(kernel.PR_CAP_AMBIENT, kernel.PR_CAP_AMBIENT_RAISE, number)
        if self.set_no_new_privs:
            kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
