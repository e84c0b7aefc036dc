"""Netlink from the parent, in any named network namespace (pyroute2).

Not a primitive: net.py and bandwidth.py both use it to talk to the kernel's
rtnetlink in the host's namespace or in a container's.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from . import kernel

NETNS_DIR = "/run/netns"                  # where ip-netns(8) keeps named namespaces

T = TypeVar("T")


def in_netns(netns: str | None, work: Callable[[Any], T]) -> T:
    """Call ``work(ipr)`` with a pyroute2 IPRoute whose netlink socket is in the
    named network namespace ``netns`` (the host's when None); return its result.

    A socket belongs to the network namespace of the thread that created it,
    and setns(2) with CLONE_NEWNET moves only the calling thread. So a
    short-lived thread joins the namespace, opens the socket, does the work and
    ends: the rest of the process never leaves the host's namespace. (The host's
    work runs in a thread too: pyroute2's synchronous API runs an asyncio loop,
    which cannot nest in a notebook kernel's running loop.)
    """
    import threading                  # lazily, as pyroute2: `labkit run --net none` needs neither
    from pyroute2 import IPRoute      # lazily: `labkit run --net none` never loads netlink

    outcome: dict[str, Any] = {}

    def thread() -> None:
        try:
            if netns is not None:
                fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    kernel.setns(fd, kernel.CLONE_NEWNET)
                finally:
                    os.close(fd)
            with IPRoute() as ipr:
                outcome["result"] = work(ipr)
        except BaseException as e:     # handed to the caller's thread below
            outcome["error"] = e

    worker = threading.Thread(target=thread, name=f"labkit-netlink-{netns or 'host'}")
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
