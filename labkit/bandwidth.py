"""Network bandwidth: not a cgroup, but traffic control (tc) on the container's veth.

tc-tbf(8): the Token Bucket Filter qdisc lets packets leave a device only as
fast as tokens arrive (``rate`` bytes per second); up to ``burst`` bytes of
tokens may be saved up, and packets wait in a queue of at most ``latency``
worth of data before they are dropped. A qdisc shapes what a device
*sends*, so the container's two directions are shaped on the two ends of its
veth pair (veth(4)):

- the host end (``lk-X-Y``, in the host's namespace) sends what goes *into*
  the container;
- the container's ``eth0`` (in its named namespace) sends what comes *out*.

Both are set over netlink (RTM_NEWQDISC) with pyroute2, from join(), once the
network primitive has made the pair. This module does not import the network
primitive: it is handed any object with ``host_veth`` and ``netns`` (the name
under /run/netns) set by the time join() runs.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

from .cgroups.units import parse_rate
from .errors import KernelError
from .netlink import in_netns
from .spawn import Primitive

LATENCY = "50ms"         # how long a packet may wait in tbf's queue before being dropped
MIN_BURST = 3028         # two full Ethernet frames: tbf needs burst >= MTU


class VethLink(Protocol):
    host_veth: str | None
    netns: str | None


def burst_for(rate: int) -> int:
    """Bucket size: 20 ms of traffic at ``rate``, at least two frames."""
    return max(MIN_BURST, rate // 50)


def set_rate(netns: str | None, ifname: str, rate: int) -> None:
    """Replace the root qdisc of ``ifname`` with tbf at ``rate`` bytes/s (tc qdisc replace ... tbf)."""
    def work(ipr: Any) -> None:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.tc("replace", "tbf", index, rate=rate, burst=burst_for(rate), latency=LATENCY)
    _netlink(f"tc tbf on {ifname}", lambda: in_netns(netns, work))


def qdisc(netns: str | None, ifname: str) -> dict[str, int]:
    """The root qdisc of ``ifname`` as the kernel reports it: kind, rate, sent bytes/packets, drops."""
    found: dict[str, Any] = {}

    def work(ipr: Any) -> None:
        from pyroute2.netlink.rtnl import TC_H_ROOT     # the parent of a root qdisc (<linux/pkt_sched.h>)

        index = ipr.link_lookup(ifname=ifname)[0]
        for msg in ipr.get_qdiscs(index=index):
            if msg["parent"] == TC_H_ROOT:
                stats = msg.get_attr("TCA_STATS2").get_attr("TCA_STATS_BASIC")
                queue = msg.get_attr("TCA_STATS2").get_attr("TCA_STATS_QUEUE")
                found.update(kind=msg.get_attr("TCA_KIND"), bytes=stats["bytes"],
                             packets=stats["packets"], drops=queue["drops"])
                options = msg.get_attr("TCA_OPTIONS")
                if found["kind"] == "tbf" and options is not None:
                    found["rate"] = options.get_attr("TCA_TBF_PARMS")["rate"]
    in_netns(netns, work)
    return found


def _netlink(step: str, call: Callable[[], None]) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        call()
    except NetlinkError as e:
        raise KernelError(f"bandwidth: {step}", e.code, os.strerror(e.code)) from None


class Bandwidth(Primitive):
    """Shape the container's traffic to ``rate`` (``1mbit``, ``500kbit``, ``2MB/s``) both ways.

    Put it after the network primitive ``link`` in the list of primitives, so
    its join() runs once the veth pair exists. The qdiscs go away with the
    links when the network primitive deletes them: release() has nothing of
    its own to remove.
    """

    name = "bandwidth"

    def __init__(self, rate: str | int, link: VethLink) -> None:
        self.rate = parse_rate(rate, "--bandwidth rate")
        self.link = link

    def join(self, pid: int) -> None:
        set_rate(None, self.link.host_veth, self.rate)       # into the container
        set_rate(self.link.netns, "eth0", self.rate)         # out of the container
