"""Syscall numbers <-> names, from libseccomp's table for each architecture.

The kernel's ``raw_syscalls:sys_enter`` event records only the number (``id``).
libseccomp carries each architecture's table, generated from the kernel's own
(x86_64: arch/x86/entry/syscalls/syscall_64.tbl; aarch64: the generic table of
include/uapi/asm-generic/unistd.h), and resolves a number with
seccomp_syscall_resolve_num_arch(3) and a name with
seccomp_syscall_resolve_name_arch(3); the binding is chosen in libseccomp.py.

A libseccomp knows the kernel tables of its release. Measured on Debian 12
(libseccomp 2.5.4-1+deb12u1, which Debian patched to know "syscalls up to Linux
6.7"): of the numbers 0-469, x86_64 and aarch64 both lack only 457-469
(statmount, Linux 6.8, to file_setattr, Linux 6.17) beyond the numbers no call
has (x86_64 335-423; aarch64 244-259, the arch-specific range, and 295-423).
A number libseccomp does not know prints as ``syscall_N``; a name it does not
know has no number (KeyError), and kernel.syscall() then raises ENOSYS.
"""

from __future__ import annotations

import functools
import os


def _arch(machine: str | None) -> int | None:
    """libseccomp's SCMP_ARCH_* token for ``machine`` (default: this one's, uname -m)."""
    from .libseccomp import ARCHES

    return ARCHES.get(machine or os.uname().machine)


@functools.cache
def syscall_name(number: int, machine: str | None = None) -> str:
    """The name of syscall ``number`` on ``machine`` (default: this one's, uname -m);
    ``syscall_N`` when libseccomp does not know it."""
    from .libseccomp import binding

    arch = _arch(machine)
    if arch is None:
        return f"syscall_{number}"
    try:
        name = binding.resolve_syscall(arch, number)
    except ValueError:                        # seccomp_syscall_resolve_num_arch returned NULL
        return f"syscall_{number}"
    return name.decode() if isinstance(name, bytes) else name


@functools.cache
def syscall_number(name: str, machine: str | None = None) -> int:
    """The number of syscall ``name`` on ``machine``; KeyError if it has none there.

    libseccomp answers a name it does not know with __NR_SCMP_ERROR (-1), and a
    call that exists on other architectures only (``open`` on aarch64) with a
    negative pseudo-number: both are no number here.
    """
    from .libseccomp import binding

    arch = _arch(machine)
    number = -1 if arch is None else binding.resolve_syscall(arch, name)
    if number < 0:
        raise KeyError(name)
    return number
