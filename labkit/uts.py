"""UTS namespace: the container's own hostname and NIS domain name.

uts_namespaces(7): the two identifiers returned by uname(2) in ``nodename``
and ``domainname`` belong to the caller's UTS namespace; sethostname(2) in a
new UTS namespace changes only that namespace. Both are at most 64 bytes.
"""

from __future__ import annotations

from . import kernel
from .errors import UsageError
from .spawn import Primitive

HOST_NAME_MAX = 64  # bytes, from <limits.h>; sethostname(2) fails with EINVAL beyond


def check_name(name: str, what: str = "hostname") -> str:
    """Return ``name`` if the kernel would accept it, else raise UsageError."""
    size = len(name.encode())
    if size == 0:
        raise UsageError(f"empty {what}", f"give a {what} of 1 to {HOST_NAME_MAX} bytes")
    if size > HOST_NAME_MAX:
        raise UsageError(f"{what} is {size} bytes, over the kernel's limit of {HOST_NAME_MAX}",
                         f"choose a {what} of at most {HOST_NAME_MAX} bytes")
    return name


class UtsNamespace(Primitive):
    """A new UTS namespace, with ``hostname`` and ``domainname`` set inside."""

    name = "uts"
    flags = kernel.CLONE_NEWUTS

    def __init__(self, hostname: str | None = None, domainname: str | None = None) -> None:
        self.hostname = check_name(hostname) if hostname is not None else None
        self.domainname = check_name(domainname, "domain name") if domainname is not None else None

    def enter(self) -> None:
        if self.hostname is not None:
            kernel.sethostname(self.hostname)
        if self.domainname is not None:
            kernel.setdomainname(self.domainname)
