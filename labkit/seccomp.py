"""seccomp: a filter the kernel runs on every system call before the call itself.

seccomp(2): a process installs a classic BPF program (SECCOMP_MODE_FILTER);
from then on, at each system call, the kernel runs it on the call's number,
architecture and six arguments, and the program's answer decides: ALLOW the
call, fail it with an ERRNO without running it, or kill the process. The
filter is inherited by children and kept across execve(2), and it can never
be removed. Installing one needs no_new_privs (or CAP_SYS_ADMIN), so that a
filter cannot trick a setuid program.

Docker's default profile denies an unprivileged container the calls that
reach outside its namespaces or into the kernel itself; this module denies the
same list with EPERM, ``clone`` only when its flags ask for a new namespace
(an argument filter: ``flags & CLONE_NEW* == CLONE_NEW*``), and ``clone3`` with
ENOSYS, as Docker does, because its flags sit in memory that a seccomp filter
cannot read: the C library then falls back to ``clone``, which the filter can
check. The check runs before the kernel's tracepoint ``raw_syscalls:sys_enter``,
so a denied call never appears there (only its ``sys_exit`` with -EPERM).
``Seccomp.from_profile()`` loads a Docker-format JSON profile instead.

The program is compiled in the parent with libseccomp (the binding libseccomp.py
chooses), exported as raw BPF and kept in memory; the child (between fork and
execve) only makes the one prctl(2) call that installs it. libseccomp's own
``seccomp_load()`` would allocate memory to generate the program, which is
not safe in the child of a multi-threaded parent.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any, Iterable, NamedTuple

from . import kernel
from .errors import LabkitError
from .spawn import Primitive

# The calls Docker's default profile denies to a container without
# CAP_SYS_ADMIN & co.; each is denied here with EPERM (seccomp(2) SECCOMP_RET_ERRNO).
DENIED: tuple[str, ...] = (
    "mount", "umount2", "unshare", "setns", "pivot_root",             # namespaces and mounts
    "keyctl", "add_key", "request_key",                               # the kernel keyring (not namespaced)
    "bpf", "perf_event_open", "userfaultfd", "ptrace",                # kernel programs, other processes
    "kexec_load", "kexec_file_load", "reboot",                        # replace or stop the kernel
    "init_module", "finit_module", "delete_module",                   # kernel modules
    "open_by_handle_at",                                              # file handles bypass the mount tree
    "swapon", "swapoff",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",     # the clock is not namespaced
)

# clone(2) flags that make a namespace; a clone with any of them is denied.
NAMESPACE_FLAGS: tuple[int, ...] = tuple(kernel.NAMESPACES.values())

# The actions a rule can take, by their libseccomp names (seccomp_rule_add(3));
# each is a SECCOMP_RET_* of seccomp(2). ERRNO and TRACE carry a number (errnoRet).
# SCMP_ACT_NOTIFY is left out: it needs a supervisor holding the listener fd.
ACTIONS: tuple[str, ...] = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_LOG",
                            "SCMP_ACT_TRAP", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
                            "SCMP_ACT_KILL_PROCESS")
WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")

# Argument comparisons (seccomp_rule_add(3): SCMP_CMP_*) and how they read.
OPERATORS: dict[str, str] = {"SCMP_CMP_NE": "!=", "SCMP_CMP_LT": "<", "SCMP_CMP_LE": "<=",
                             "SCMP_CMP_EQ": "==", "SCMP_CMP_GE": ">=", "SCMP_CMP_GT": ">",
                             "SCMP_CMP_MASKED_EQ": "&"}

# A profile's rule applies only on some architectures ("includes"/"excludes"
# "arches"): Docker names them as Go does (GOARCH), not as uname -m does.
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class Condition(NamedTuple):
    """A comparison of argument ``index`` (0-5) with ``value``; for
    SCMP_CMP_MASKED_EQ, ``arg & value == value_two``."""

    index: int
    op: str
    value: int
    value_two: int = 0

    def __str__(self) -> str:
        if self.op != "SCMP_CMP_MASKED_EQ":
            return f"when arg{self.index} {OPERATORS[self.op]} {self.value:#x}"
        kind = {flag: ns for ns, flag in kernel.NAMESPACES.items()}.get(self.value)
        if self.index == 0 and kind and self.value == self.value_two:
            return f"asking for a new {kind} namespace"           # clone(2)'s flags
        return f"when arg{self.index} & {self.value:#x} == {self.value_two:#x}"


class Rule(NamedTuple):
    """One rule of the filter: ``syscall`` gets ``action`` (with ``errno`` for
    ERRNO and TRACE), for every call or only when all ``args`` hold."""

    syscall: str
    errno: int | None = errno.EPERM
    args: tuple[Condition, ...] = ()
    action: str = "SCMP_ACT_ERRNO"

    def __str__(self) -> str:
        when = "".join(f" {c}" for c in self.args)
        return f"{self.syscall}{when} -> {action_name(self.action, self.errno)}"


def action_name(action: str, number: int | None) -> str:
    """``SCMP_ACT_ERRNO(EPERM)``, ``SCMP_ACT_ALLOW``: an action as libseccomp writes it."""
    if number is None:
        return action
    return f"{action}({errno.errorcode.get(number, number)})"


def rules(denied: Iterable[str] = DENIED) -> list[Rule]:
    """labkit's rules: each call of ``denied`` fails with EPERM; ``clone``
    with EPERM when its flags (arg 0 on x86_64 and aarch64) ask for any new
    namespace; ``clone3`` with ENOSYS."""
    return ([Rule(name, errno.EPERM) for name in denied]
            + [Rule("clone", errno.EPERM, (Condition(0, "SCMP_CMP_MASKED_EQ", flag, flag),))
               for flag in NAMESPACE_FLAGS]
            + [Rule("clone3", errno.ENOSYS)])


def _action(binding: Any, action: str, number: int | None) -> int:
    """The binding's value for a libseccomp action name."""
    if action == "SCMP_ACT_ERRNO":
        return binding.ERRNO(number)
    if action == "SCMP_ACT_TRACE":
        return binding.TRACE(number)
    return {"SCMP_ACT_ALLOW": binding.ALLOW, "SCMP_ACT_LOG": binding.LOG, "SCMP_ACT_TRAP": binding.TRAP,
            "SCMP_ACT_KILL": binding.KILL, "SCMP_ACT_KILL_THREAD": binding.KILL,
            "SCMP_ACT_KILL_PROCESS": binding.KILL_PROCESS}[action]


def build_filter(rule_list: Iterable[Rule], default: tuple[str, int | None] = ("SCMP_ACT_ALLOW", None),
                 arches: Iterable[str] = ()) -> bytes:
    """Compile the filter with libseccomp and return its BPF program (8 bytes
    an instruction). The native architecture is always in it; ``arches`` adds
    others by libseccomp's name (``SCMP_ARCH_X86``): a call made with another
    architecture's numbers (the 32-bit ABI) kills the process (SCMP_ACT_KILL,
    libseccomp's default for a bad architecture)."""
    from .libseccomp import binding

    f = binding.SyscallFilter(_action(binding, *default))
    for arch in arches:
        token = getattr(binding.Arch, arch.removeprefix("SCMP_ARCH_"))
        if not f.exist_arch(token):          # the native one is in already
            f.add_arch(token)
    for rule in rule_list:
        ops = {name: getattr(binding, name.removeprefix("SCMP_CMP_")) for name in OPERATORS}
        f.add_rule(_action(binding, rule.action, rule.errno), rule.syscall,
                   *(binding.Arg(c.index, ops[c.op], c.value, c.value_two) for c in rule.args))
    fd = os.memfd_create("labkit-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            f.export_bpf(out)
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def instruction_count(program: bytes) -> int:
    """The number of BPF instructions in ``program``."""
    return len(program) // ctypes.sizeof(kernel.SockFilter)


class Seccomp(Primitive):
    """Install the seccomp filter that denies ``denied`` (Docker's list by default),
    or, built with ``from_profile()``, a Docker-format profile's.

    prepare() compiles the program in the parent; enter() installs it with one
    prctl(2). Put it last: every earlier enter() (mount, pivot_root, sethostname)
    makes calls the filter denies, and it needs no_new_privs (caps.py) first.
    """

    name = "seccomp"

    def __init__(self, denied: Iterable[str] = DENIED) -> None:
        self.denied = tuple(denied)
        self.rules: list[Rule] = rules(self.denied)
        self.default: tuple[str, int | None] = ("SCMP_ACT_ALLOW", None)
        self.arches: tuple[str, ...] = ()
        self.source = "labkit's list (seccomp.DENIED)"
        self.skipped: tuple[str, ...] = ()     # a profile's names libseccomp does not know
        self.program: bytes = b""

    @classmethod
    def from_profile(cls, path: str, caps: Iterable[str] | None = None) -> Seccomp:
        """The filter of the Docker-format seccomp profile at ``path``.

        ``caps``: the capabilities the container keeps (default: Docker's 14,
        caps.DOCKER_DEFAULT), for rules that apply only with or without some.
        A bad file raises UsageError naming the field. See seccomp_profile.py's
        docstring for the format and what labkit supports of it.
        """
        from . import seccomp_profile

        if caps is None:
            from .caps import DOCKER_DEFAULT
            caps = DOCKER_DEFAULT
        loaded = seccomp_profile.load(path, set(caps), GOARCH.get(os.uname().machine, os.uname().machine))
        self = cls(())
        self.rules, self.default, self.arches = loaded.rules, loaded.default, loaded.arches
        self.source, self.skipped = path, loaded.skipped
        return self

    def prepare(self) -> None:
        try:
            self.program = build_filter(self.rules, self.default, self.arches)
        except ImportError:
            raise LabkitError("the seccomp filter needs libseccomp's Python binding and libseccomp.so.2",
                              "run scripts/setup.sh (apt libseccomp2, pip pyseccomp)") from None
        except (OSError, ValueError, RuntimeError) as e:
            raise LabkitError(f"libseccomp could not build the filter of {self.source}: {e}",
                              "check the syscall names and arguments of its rules") from None
        # Kept on self: the child's copy of the parent's memory holds them at the same address.
        count = instruction_count(self.program)
        self._insns = (kernel.SockFilter * count).from_buffer_copy(self.program)
        self._prog = kernel.SockFprog(count, ctypes.cast(self._insns, ctypes.POINTER(kernel.SockFilter)))

    def enter(self) -> None:
        kernel.seccomp_set_filter(self._prog)

    def explain(self, syscall: str, ret: int) -> str:
        """The rule that answers ``syscall`` with return value ``ret`` (-errno),
        as libseccomp writes it; '' when none can. sys_exit shows no arguments,
        so of several rules that differ only by them, none is singled out."""
        matching = [r for r in self.rules if r.syscall == syscall and r.action in WITH_ERRNO
                    and r.errno is not None and -r.errno == ret]
        if len(matching) == 1:
            return str(matching[0])
        if matching:
            return (f"{syscall} (one of {len(matching)} rules, by its arguments, which sys_exit does not show) "
                    f"-> {action_name(matching[0].action, -ret)}")
        action, number = self.default
        allowed = any(r.syscall == syscall and r.action == "SCMP_ACT_ALLOW" and not r.args for r in self.rules)
        if action in WITH_ERRNO and number is not None and -number == ret and not allowed:
            return f"{syscall}: no rule matches, defaultAction {action_name(action, number)}"
        return ""


def mode(pid: int | str = "self") -> int:
    """The Seccomp line of /proc/PID/status: 0 none, 1 strict, 2 filter (proc(5))."""
    return int(kernel.proc_status(pid).get("Seccomp", "0"))
