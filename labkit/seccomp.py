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

The program is compiled in the parent with libseccomp (pyseccomp bindings),
exported as raw BPF and kept in memory; the child (between fork and execve)
only makes the one prctl(2) call that installs it. libseccomp's own
``seccomp_load()`` would allocate memory to generate the program, which is
not safe in the child of a multi-threaded parent.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Iterable, NamedTuple

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


class Rule(NamedTuple):
    """One rule of the filter: ``syscall`` fails with ``errno`` (SECCOMP_RET_ERRNO),
    for every call, or only when arg 0 masked with ``flag`` equals ``flag``."""

    syscall: str
    errno: int
    flag: int | None = None

    def __str__(self) -> str:
        kind = {flag: ns for ns, flag in kernel.NAMESPACES.items()}.get(self.flag)
        when = "" if self.flag is None else f" asking for a new {kind} namespace"
        return f"{self.syscall}{when} -> SCMP_ACT_ERRNO({errno.errorcode[self.errno]})"


def rules(denied: Iterable[str] = DENIED) -> list[Rule]:
    """The filter's rules: each call of ``denied`` fails with EPERM; ``clone``
    with EPERM when its flags (arg 0 on x86_64 and aarch64) ask for any new
    namespace; ``clone3`` with ENOSYS."""
    return ([Rule(name, errno.EPERM) for name in denied]
            + [Rule("clone", errno.EPERM, flag) for flag in NAMESPACE_FLAGS]
            + [Rule("clone3", errno.ENOSYS)])


def build_filter(denied: Iterable[str] = DENIED) -> bytes:
    """Compile the filter with libseccomp and return its BPF program (8 bytes
    an instruction), for the native architecture only: a call made with another
    architecture's numbers (the 32-bit ABI) kills the process (SCMP_ACT_KILL)."""
    import pyseccomp   # lazily: only the parent that builds a filter needs libseccomp

    f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for rule in rules(denied):
        if rule.flag is None:
            f.add_rule(pyseccomp.ERRNO(rule.errno), rule.syscall)
        else:
            f.add_rule(pyseccomp.ERRNO(rule.errno), rule.syscall,
                       pyseccomp.Arg(0, pyseccomp.MASKED_EQ, rule.flag, rule.flag))
    fd = os.memfd_create("labkit-seccomp", os.MFD_CLOEXEC)
    try:
        f.export_bpf(os.fdopen(os.dup(fd), "wb"))
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def instruction_count(program: bytes) -> int:
    """The number of BPF instructions in ``program``."""
    return len(program) // ctypes.sizeof(kernel.SockFilter)


class Seccomp(Primitive):
    """Install the seccomp filter that denies ``denied`` (Docker's list by default).

    prepare() compiles the program in the parent; enter() installs it with one
    prctl(2). Put it last: every earlier enter() (mount, pivot_root, sethostname)
    makes calls the filter denies, and it needs no_new_privs (caps.py) first.
    """

    name = "seccomp"

    def __init__(self, denied: Iterable[str] = DENIED) -> None:
        self.denied = tuple(denied)
        self.program: bytes = b""

    def prepare(self) -> None:
        try:
            self.program = build_filter(self.denied)
        except ImportError:
            raise LabkitError("the seccomp filter needs pyseccomp and libseccomp.so.2",
                              "run scripts/setup.sh (pip pyseccomp, apt libseccomp2)") from None
        except (OSError, ValueError) as e:
            raise LabkitError(f"libseccomp could not build the filter: {e}",
                              "check the syscall names in the deny list") from None
        # Kept on self: the child's copy of the parent's memory holds them at the same address.
        count = instruction_count(self.program)
        self._insns = (kernel.SockFilter * count).from_buffer_copy(self.program)
        self._prog = kernel.SockFprog(count, ctypes.cast(self._insns, ctypes.POINTER(kernel.SockFilter)))

    def enter(self) -> None:
        kernel.seccomp_set_filter(self._prog)


def mode(pid: int | str = "self") -> int:
    """The Seccomp line of /proc/PID/status: 0 none, 1 strict, 2 filter (proc(5))."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    return 0
