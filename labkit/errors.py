"""Errors labkit raises: one line that says what failed, why, and what to do.

The CLI prints ``str(error)`` and exits with ``error.exit_code``: 125 when
labkit itself failed, 126 when the command cannot be executed, 127 when it was
not found (the exit codes of docker run and of POSIX shells).
"""

from __future__ import annotations

import errno as _errno
import os


class LabkitError(Exception):
    """Something labkit was asked to do could not be done."""

    exit_code = 125

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}: {hint}" if hint else message)


class UsageError(LabkitError):
    """The user asked for something malformed (an option, a name, a size)."""


class NotRootError(LabkitError):
    """labkit needs privileges the caller does not have."""

    def __init__(self) -> None:
        super().__init__("labkit needs root",
                         "run it inside the lab VM, or with sudo")


class KernelError(LabkitError):
    """The kernel refused a step of the launch: names the step and the errno."""

    def __init__(self, step: str, err: int, detail: str = "") -> None:
        self.step = step
        self.errno = err
        name = _errno.errorcode.get(err, str(err)) if err else "an exception"
        what = detail or os.strerror(err)
        super().__init__(f"{step} failed with {name}: {what}", _hint_for(err))


class CommandNotFoundError(LabkitError):
    """execve(2) found no such file in the container (ENOENT): exit 127."""

    exit_code = 127


class CommandNotExecutableError(LabkitError):
    """execve(2) refused the file (EACCES, ENOEXEC, ...): exit 126."""

    exit_code = 126


def _hint_for(err: int) -> str:
    """What the user can do about a refusal, by errno."""
    return {
        _errno.EPERM: "the kernel denied the privilege; run as root, or check that "
                      "no security module (seccomp, AppArmor) forbids it",
        _errno.EACCES: "permission denied; check ownership and modes",
        _errno.EINVAL: "the kernel rejected an argument; check `labkit doctor`",
        _errno.ENOSPC: "a kernel limit was reached (see /proc/sys/user/max_*_namespaces)",
        _errno.EBUSY: "the object is in use; `labkit cleanup` removes leftovers",
    }.get(err, "see `labkit doctor`")
