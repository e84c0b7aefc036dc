"""Device access: which device nodes the container may open, whatever nodes it makes.

A device node is only a name for a (type, major, minor) number; whoever can
open a node for a disk reads the disk, whichever filesystem the node is on.
Docker keeps CAP_MKNOD in a container, so the node itself cannot be the guard:
the kernel's device check is. Both cgroup versions ask one function,
``devcgroup_check_permission(type, major, minor, access)`` in
security/device_cgroup.c, at open(2) (access read and/or write, from the
open mode) and at mknod(2) (access mknod); a refusal is EPERM, even for root.
It runs the cgroup v2 device programs first, then the v1 rules.

- cgroup v1 (``DeviceCgroup``): the devices controller.
  Documentation/admin-guide/cgroup-v1/devices.rst: each group has a list of
  ``type major:minor access`` rules (type ``a`` all, ``c`` char, ``b`` block;
  access ``r`` read, ``w`` write, ``m`` mknod); writing ``a`` to
  ``devices.deny`` empties it, each write to ``devices.allow`` adds a rule.
- cgroup v2 (``DeviceProgram``) has no devices files: the same rules are an
  eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the group, as
  runc makes it. ``__cgroup_bpf_check_dev_permission`` (kernel/bpf/cgroup.c)
  runs the programs of the opener's v2 group with a ``struct
  bpf_cgroup_dev_ctx`` {access_type = (access << 16) | type, major, minor}
  (include/uapi/linux/bpf.h); a program that returns 0 denies, 1 allows.

Both are made from one table, ``ALLOWED``; ``listing()`` shows the program.
"""

from __future__ import annotations

import errno
import os
import time
from typing import NamedTuple

from . import bpf
from .bpf import Insn
from .cgroups import layout, open_self_move
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

# A rule's letters -> the kernel's numbers (include/uapi/linux/bpf.h).
DEV_TYPES = {"b": bpf.BPF_DEVCG_DEV_BLOCK, "c": bpf.BPF_DEVCG_DEV_CHAR}
ACCESSES = {"m": bpf.BPF_DEVCG_ACC_MKNOD, "r": bpf.BPF_DEVCG_ACC_READ, "w": bpf.BPF_DEVCG_ACC_WRITE}
ALL_ACCESS = bpf.BPF_DEVCG_ACC_MKNOD | bpf.BPF_DEVCG_ACC_READ | bpf.BPF_DEVCG_ACC_WRITE

PROG_NAME = "labkit_devices"   # what BPF_OBJ_GET_INFO_BY_FD and fdinfo-based tools show


class Rule(NamedTuple):
    """One ``type major:minor access`` rule; None stands for ``*`` (any)."""

    type: str                 # "a", "b" or "c"
    major: int | None
    minor: int | None
    access: str               # some of "rwm"

    @property
    def access_mask(self) -> int:
        return sum(ACCESSES[a] for a in set(self.access))


def parse_rule(text: str) -> Rule:
    """``"c 1:3 rwm"`` -> Rule("c", 1, 3, "rwm"), the syntax of devices.rst."""
    try:
        kind, number, access = text.split()
        major, minor = (None if n == "*" else int(n) for n in number.split(":"))
    except ValueError:
        raise UsageError(f"bad device rule {text!r}", "write it as TYPE MAJOR:MINOR ACCESS, "
                         "e.g. 'c 1:3 rwm' (devices.rst)") from None
    if kind not in ("a", *DEV_TYPES) or not access or set(access) - set(ACCESSES) \
            or any(n is not None and not 0 <= n < 1 << 20 for n in (major, minor)):
        raise UsageError(f"bad device rule {text!r}", "type a, b or c; access some of r, w, m")
    return Rule(kind, major, minor, access)


def hierarchy(where: layout.Layout | None = None) -> str | None:
    """Where the v1 devices hierarchy is mounted, or None (pure cgroup v2)."""
    return (where or layout.read()).v1_mount("devices")


def mechanism(where: layout.Layout | None = None) -> str | None:
    """How this host controls devices: "v1" (a devices hierarchy), "bpf" (none,
    but a cgroup2 mount to attach a device program to) or None."""
    where = where or layout.read()
    if where.v1_mount("devices") is not None:
        return "v1"
    return "bpf" if where.v2_mount is not None else None


def available() -> bool:
    return mechanism() is not None


# -- cgroup v2: the rules as an eBPF program -------------------------------

# Where the program keeps the context's fields (r1 points to the context).
R_TYPE, R_ACCESS, R_MAJOR, R_MINOR = 2, 3, 4, 5
_NAMES = {R_TYPE: "type", R_ACCESS: "access", R_MAJOR: "major", R_MINOR: "minor"}
_KINDS = {"b": "block", "c": "char"}
_ACCESS_NAMES = {"m": "mknod", "r": "read", "w": "write"}


def program(allowed: tuple[str, ...] = ALLOWED) -> list[tuple[str, list[tuple[Insn, str]]]]:
    """The device program for ``allowed``, in blocks: (what the block does,
    [(instruction, note)]).

    The first block loads the context; then one block per rule, in order,
    whose tests each jump to the next block when the device does not match
    (a rule with ``*`` or with all of rwm skips that test) and which ends in
    ``return 1`` (allow); the last block is ``return 0`` (deny: EPERM). A
    request matches a rule when its access is a subset of the rule's, as in
    v1 (devices.rst): open(O_RDWR) asks read|write in one call. The verifier
    (cgroup_dev_is_valid_access, kernel/bpf/cgroup.c) lets the program read
    the context's three u32 fields and never write them; it must return 0 or 1.
    """
    blocks = [("load struct bpf_cgroup_dev_ctx (r1 points to it)", [
        (bpf.load_u32(R_TYPE, 1, 0), "access_type = (access << 16) | type"),
        (bpf.mov64_reg(R_ACCESS, R_TYPE), ""),
        (bpf.alu64_imm(bpf.BPF_RSH, R_ACCESS, 16), "access: 1 mknod, 2 read, 4 write"),
        (bpf.alu64_imm(bpf.BPF_AND, R_TYPE, 0xFFFF), "type: 1 block, 2 char"),
        (bpf.load_u32(R_MAJOR, 1, 4), "major"),
        (bpf.load_u32(R_MINOR, 1, 8), "minor"),
    ])]
    for text in allowed:
        rule = parse_rule(text)
        tests: list[tuple[int, int, int, str]] = []
        if rule.type != "a":
            tests.append((bpf.BPF_JNE, R_TYPE, DEV_TYPES[rule.type], f"not a {_KINDS[rule.type]} device"))
        beyond = ALL_ACCESS & ~rule.access_mask
        if beyond:
            asked = " or ".join(name for a, name in _ACCESS_NAMES.items() if ACCESSES[a] & beyond)
            tests.append((bpf.BPF_JSET, R_ACCESS, beyond, f"asks {asked}"))
        for reg, number in ((R_MAJOR, rule.major), (R_MINOR, rule.minor)):
            if number is not None:
                tests.append((bpf.BPF_JNE, reg, number, f"{_NAMES[reg]} is not {number}"))
        # Test i jumps over the rest of the block: its other tests, r0 = 1, exit.
        insns = [(bpf.jump_imm(op, reg, imm, len(tests) - i + 1), f"{why}: next rule")
                 for i, (op, reg, imm, why) in enumerate(tests)]
        insns += [(bpf.alu64_imm(bpf.BPF_MOV, 0, 1), "allow"), (bpf.exit_insn(), "")]
        blocks.append((f"rule {text}", insns))
    blocks.append(("no rule matched", [(bpf.alu64_imm(bpf.BPF_MOV, 0, 0), "deny: EPERM"),
                                       (bpf.exit_insn(), "")]))
    return blocks


def instructions(allowed: tuple[str, ...] = ALLOWED) -> list[Insn]:
    """The program for ``allowed`` as the kernel gets it."""
    return [insn for _, block in program(allowed) for insn, _ in block]


def listing(allowed: tuple[str, ...] = ALLOWED) -> list[str]:
    """The program, disassembled from its instructions, one line each, under
    the rule each block implements::

        ; rule c 1:3 rwm
          14: if r2 != 2 goto pc+3  (-> 18)      # not c: next rule
    """
    lines, pc = [], 0
    for what, block in program(allowed):
        lines.append(f"; {what}")
        for insn, note in block:
            text = f"{pc:4}: {bpf.disassemble(insn, pc)}"
            lines.append(f"{text:<44} # {note}" if note else text)
            pc += 1
    return lines


def load(insns: list[Insn]) -> int:
    """Load ``insns`` (``instructions()``) as a device program; return its fd. A
    refusal is one LabkitError line: the errno and where the verifier stopped.

    The license is labkit's own, "MIT": the verifier asks for a GPL-compatible
    one only before a call to a helper marked gpl_only (check_helper_call,
    kernel/bpf/verifier.c), and this program calls no helper."""
    try:
        return bpf.prog_load(bpf.BPF_PROG_TYPE_CGROUP_DEVICE, insns, name=PROG_NAME,
                             license="MIT", expected_attach_type=bpf.BPF_CGROUP_DEVICE)
    except OSError as e:
        raise LabkitError(f"the kernel refused the device program: {e.strerror}",
                          _load_hint(e.errno)) from None


def _load_hint(err: int) -> str:
    if err == errno.EPERM:
        return "loading a cgroup BPF program needs CAP_SYS_ADMIN (or CAP_BPF and CAP_NET_ADMIN)"
    if err in (errno.EINVAL, errno.EACCES):
        return "the verifier's reason is quoted; compare it with labkit.devices.listing()"
    return "check that the kernel has CONFIG_CGROUP_BPF (see `labkit doctor`)"


def attached(group: str) -> tuple[int, list[int]]:
    """(attach flags, program ids) of the device programs attached to the v2
    group directory ``group`` itself (BPF_PROG_QUERY)."""
    fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return bpf.prog_query(fd, bpf.BPF_CGROUP_DEVICE)
    finally:
        os.close(fd)


class DeviceProgram(Primitive):
    """The rules ``allowed`` as a BPF_PROG_TYPE_CGROUP_DEVICE program on the
    existing cgroup v2 group ``group`` (a directory), as runc does on v2.

    prepare() loads the program, attaches it to the group (BPF_PROG_ATTACH,
    attach type BPF_CGROUP_DEVICE) and closes both fds: the attachment holds
    its own reference to the program, and removing the group releases it
    (cgroup_bpf_release, kernel/bpf/cgroup.c). So release() has nothing to
    undo, and must not: detaching before the group's processes are killed
    would leave them without device rules. The group's owner (cgroups.Cgroup,
    earlier in the launch order) kills them and removes it afterwards.

    The flag is BPF_F_ALLOW_MULTI, as runc's: a device request in the group
    runs its own programs and those its ancestors attached with MULTI, and all
    must allow (bpf_prog_run_array_cg: any 0 is EPERM), so a program attached
    later below can only narrow the rules, and one that a manager (systemd)
    attached above keeps applying. Flag 0 would also refuse every program in
    the subtree (EPERM), BPF_F_ALLOW_OVERRIDE would let one below replace ours.
    """

    name = "devices"

    def __init__(self, group: str, allowed: tuple[str, ...] = ALLOWED) -> None:
        self.path = group
        self.allowed = allowed
        self.insns = instructions(allowed)   # bad rules are a UsageError now, not at start
        self.prog_id: int | None = None

    def prepare(self) -> None:
        prog_fd = load(self.insns)
        try:
            self.prog_id = int(bpf.fdinfo(prog_fd)["prog_id"])
            group_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                bpf.prog_attach(group_fd, prog_fd, bpf.BPF_CGROUP_DEVICE, bpf.BPF_F_ALLOW_MULTI)
            finally:
                os.close(group_fd)
        except OSError as e:
            raise LabkitError(f"cannot attach the device program to {self.path}: {e.strerror}",
                              "the group must be on a cgroup2 mount; see `labkit doctor`") from None
        finally:
            os.close(prog_fd)


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
                              "on cgroup v2 the rules are a DeviceProgram")
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
