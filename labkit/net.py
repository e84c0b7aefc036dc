"""Network namespace: the container's own devices, addresses, routes and ports.

network_namespaces(7): a network namespace has its own network devices, IPv4
and IPv6 stacks, routing tables, firewall rules and port numbers; a new one
holds only a loopback device ``lo``, and it is down. A physical device lives in
one namespace at a time, but it can be moved (RTM_NEWLINK with IFLA_NET_NS_FD).

veth(4): a veth pair is a virtual Ethernet cable: whatever is sent on one end
arrives on the other. Put one end in the container's namespace (renamed
``eth0``) and the other on a bridge in the host's, and the container is on a
switched LAN with every other container attached to the same bridge. Here the
bridge is ``labkit0`` with 10.88.0.1/16, which is also each container's
default gateway; nothing is routed or NATed beyond 10.88.0.0/16.

Two primitives, one per ``--net`` mode:

- ``NetNamespace`` (``--net none``): a new namespace with only ``lo``, brought
  up in the child with an ioctl (no netlink, no pyroute2).
- ``BridgeNetwork`` (``--net bridge``): the same plus a veth pair ``lk-X-Y`` /
  ``eth0`` and the address 10.88.X.Y. The parent configures everything over
  netlink with pyroute2, from join(), once the child has unshared: the
  namespace is then named ``labkit-10.88.X.Y`` under /run/netns (a bind mount
  of /proc/PID/ns/net, what ``ip netns attach`` does, see ip-netns(8)). That
  name is also the address lease: the file is created with O_EXCL, so two
  containers, even from two processes, never get the same address.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
from contextlib import contextmanager
from typing import Any, Iterator

from . import kernel
from .errors import KernelError, LabkitError, UsageError
from .netlink import NETNS_DIR, in_netns
from .spawn import Primitive

# The main routing table, where `ip route` looks by default (<linux/rtnetlink.h>: RT_TABLE_MAIN).
RT_TABLE_MAIN = 254

LAB_NETWORK = ipaddress.IPv4Network("10.88.0.0/16")
BRIDGE = "labkit0"
BRIDGE_ADDRESS = ipaddress.IPv4Interface("10.88.0.1/16")   # also the containers' gateway
FIRST_ADDRESS = ipaddress.IPv4Address("10.88.0.2")
LOCK_FILE = "/run/labkit/net.lock"        # serialises bridge and veth changes between processes
CONTAINER_IFNAME = "eth0"


def parse_address(text: str) -> ipaddress.IPv4Address:
    """Check an ``--ip ADDR[/PREFIX]`` value against the lab network; return ADDR.

    The prefix, when given, must be the lab network's (/16): every container
    is on the one bridge, so they all share its subnet and its gateway.
    """
    try:
        iface = ipaddress.IPv4Interface(text.strip())
    except ValueError as e:
        raise UsageError(f"--ip {text!r} is not an IPv4 address/prefix ({e})",
                         f"give an address of {LAB_NETWORK}, e.g. --ip 10.88.0.10/16") from None
    if iface.ip not in LAB_NETWORK:
        raise UsageError(f"--ip {iface.ip} is outside the lab network {LAB_NETWORK}",
                         "containers only get addresses on bridge labkit0, e.g. --ip 10.88.0.10/16")
    if "/" in text and iface.network.prefixlen != LAB_NETWORK.prefixlen:
        raise UsageError(f"--ip prefix /{iface.network.prefixlen} differs from the lab network's "
                         f"/{LAB_NETWORK.prefixlen}", f"write --ip {iface.ip}/{LAB_NETWORK.prefixlen}")
    if iface.ip in (LAB_NETWORK.network_address, LAB_NETWORK.broadcast_address, BRIDGE_ADDRESS.ip):
        raise UsageError(f"--ip {iface.ip} is reserved (network, broadcast or bridge labkit0's address)",
                         f"choose one from {FIRST_ADDRESS} to {LAB_NETWORK.broadcast_address - 1}")
    return iface.ip


def netns_name(address: ipaddress.IPv4Address) -> str:
    """The name of the network namespace that holds ``address``: labkit-10.88.X.Y."""
    return f"labkit-{address}"


def veth_name(address: ipaddress.IPv4Address) -> str:
    """The host end of the veth pair of ``address`` 10.88.X.Y: lk-X-Y (IFNAMSIZ is 16);
    the container's end is lk-X-Yc until join() moves it and names it eth0."""
    _, _, x, y = str(address).split(".")
    return f"lk-{x}-{y}"


def _lab_address(text: str) -> ipaddress.IPv4Address | None:
    """``text`` as an address of the lab network, or None."""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return None
    return address if address in LAB_NETWORK else None


def is_labkit_link(name: str) -> bool:
    """Is ``name`` one labkit gives a link: the bridge, or an end of a veth pair
    named by veth_name() for an address of the lab network (exactly: ``lkfoo``
    or ``lk-010-1`` is not)."""
    if name == BRIDGE:
        return True
    host = name.removesuffix("c")
    parts = host.split("-")
    if len(parts) != 3 or parts[0] != "lk":
        return False
    address = _lab_address(".".join(str(LAB_NETWORK.network_address).split(".")[:2] + parts[1:]))
    return address is not None and veth_name(address) == host


def is_labkit_netns(name: str) -> bool:
    """Is ``name`` one netns_name() gives, for an address of the lab network?"""
    address = _lab_address(name.removeprefix("labkit-"))
    return address is not None and netns_name(address) == name


@contextmanager
def _net_lock() -> Iterator[None]:
    """Hold an exclusive flock(2) while the bridge and its ports change, so one
    process never deletes the bridge another is about to attach a veth to."""
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                      # closing the last descriptor drops the lock


@contextmanager
def _netlink(step: str) -> Iterator[None]:
    """Raise a netlink refusal (pyroute2's NetlinkError) as a KernelError naming ``step``."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as e:
        raise KernelError(f"net: {step}", e.code, os.strerror(e.code)) from None


class NetNamespace(Primitive):
    """A new network namespace with only the loopback device, brought up (``--net none``)."""

    name = "net"
    flags = kernel.CLONE_NEWNET

    def enter(self) -> None:
        # A new namespace's lo is down: 127.0.0.1 answers only once it is up.
        kernel.link_up("lo")


class BridgeNetwork(NetNamespace):
    """A network namespace on bridge labkit0: eth0 with 10.88.X.Y/16, default route
    via 10.88.0.1 (``--net bridge``). ``host_veth`` is the host end of its veth
    pair (where a tc qdisc shapes the container's traffic)."""

    def __init__(self, ip: str | None = None) -> None:
        self.requested = parse_address(ip) if ip is not None else None
        self.address: ipaddress.IPv4Address | None = None
        self.netns: str | None = None
        self.host_veth: str | None = None
        self._peer: str | None = None

    def prepare(self) -> None:
        with _net_lock():
            self.address = self._lease()
            self.netns = netns_name(self.address)
            self.host_veth = veth_name(self.address)
            self._peer = self.host_veth + "c"
            with _netlink("create bridge and veth"):
                in_netns(None, self._make_veth)

    def _make_veth(self, ipr: Any) -> None:
        bridge = _ensure_bridge(ipr)
        # veth(4): both ends are made in the host's namespace; the peer moves in join().
        ipr.link("add", ifname=self.host_veth, kind="veth", peer=self._peer)
        host = ipr.link_lookup(ifname=self.host_veth)[0]
        ipr.link("set", index=host, master=bridge, state="up")

    def join(self, pid: int) -> None:
        # Name the child's namespace: bind-mount its /proc/PID/ns/net (ip-netns(8)).
        kernel.mount(f"/proc/{pid}/ns/net", os.path.join(NETNS_DIR, self.netns), None, kernel.MS_BIND)
        with _netlink("move veth into the namespace"):
            in_netns(None, self._move_peer)
        with _netlink("configure eth0"):
            in_netns(self.netns, self._configure_eth0)

    def _move_peer(self, ipr: Any) -> None:
        # RTM_NEWLINK with IFLA_NET_NS_FD: the device leaves the host's namespace.
        peer = ipr.link_lookup(ifname=self._peer)[0]
        ipr.link("set", index=peer, net_ns_fd=os.path.join(NETNS_DIR, self.netns))

    def _configure_eth0(self, ns: Any) -> None:
        eth0 = ns.link_lookup(ifname=self._peer)[0]
        ns.link("set", index=eth0, ifname=CONTAINER_IFNAME)
        ns.addr("add", index=eth0, address=str(self.address), prefixlen=LAB_NETWORK.prefixlen)
        ns.link("set", index=eth0, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=str(BRIDGE_ADDRESS.ip))

    def release(self) -> None:
        if self.netns is None:            # prepare() never leased an address (or released already)
            return
        with _net_lock():
            try:
                in_netns(None, self._remove_links)
            finally:
                _unname_netns(self.netns)    # the address lease goes whatever happened
                self.netns = None
            in_netns(None, _remove_bridge_if_unused)

    def _remove_links(self, ipr: Any) -> None:
        # Deleting one end of a veth pair deletes the other, wherever it is (veth(4)).
        for name in (self.host_veth, self._peer):
            for index in ipr.link_lookup(ifname=name):
                ipr.link("del", index=index)

    def _lease(self) -> ipaddress.IPv4Address:
        """Take the requested address, or the first free one from 10.88.0.2, by
        creating its namespace name with O_EXCL (atomic between processes)."""
        os.makedirs(NETNS_DIR, exist_ok=True)
        candidates = [self.requested] if self.requested else _addresses_from(FIRST_ADDRESS)
        for address in candidates:
            try:
                os.close(os.open(os.path.join(NETNS_DIR, netns_name(address)),
                                 os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
                return address
            except FileExistsError:
                continue
        if self.requested:
            raise LabkitError(f"--ip {self.requested} is in use by another labkit container "
                              f"(network namespace {netns_name(self.requested)})",
                              "choose another address, or leave out --ip to get the next free one")
        raise LabkitError(f"no free address left in {LAB_NETWORK}",
                          "stop some containers, or run `labkit cleanup` to remove leftovers")


def _addresses_from(first: ipaddress.IPv4Address) -> Iterator[ipaddress.IPv4Address]:
    """Every usable container address of the lab network, in order, from ``first``."""
    address = first
    while address < LAB_NETWORK.broadcast_address:
        yield address
        address += 1


def _ensure_bridge(ipr: Any) -> int:
    """The index of bridge labkit0 with 10.88.0.1/16, up; made if missing."""
    found = ipr.link_lookup(ifname=BRIDGE)
    if found:
        return found[0]
    ipr.link("add", ifname=BRIDGE, kind="bridge")
    index = ipr.link_lookup(ifname=BRIDGE)[0]
    ipr.addr("add", index=index, address=str(BRIDGE_ADDRESS.ip), prefixlen=BRIDGE_ADDRESS.network.prefixlen)
    ipr.link("set", index=index, state="up")
    return index


def _remove_bridge_if_unused(ipr: Any) -> None:
    """Delete labkit0 (and so its address and route) once no port is attached."""
    for index in ipr.link_lookup(ifname=BRIDGE):
        if not any(link.get_attr("IFLA_MASTER") == index for link in ipr.get_links()):
            ipr.link("del", index=index)


def _unname_netns(name: str) -> None:
    """Undo the bind mount that names a namespace, and remove its file; the
    namespace itself goes when its last process exits."""
    path = os.path.join(NETNS_DIR, name)
    try:
        kernel.umount2(path, kernel.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):   # not mounted (yet), or gone
            raise
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- reading the live state (for the notebook's views) ---------------------------------

def _link_rows(ipr: Any) -> list[dict[str, Any]]:
    import socket          # here, not on the run path; pyroute2 has loaded it already

    addresses: dict[int, list[str]] = {}
    for a in ipr.get_addr(family=socket.AF_INET):
        addresses.setdefault(a["index"], []).append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    rows = []
    for link in ipr.get_links():
        info = link.get_attr("IFLA_LINKINFO")
        rows.append({
            "index": link["index"],
            "name": link.get_attr("IFLA_IFNAME"),
            "kind": info.get_attr("IFLA_INFO_KIND") if info else None,
            "state": link.get_attr("IFLA_OPERSTATE"),
            "mac": link.get_attr("IFLA_ADDRESS"),
            "master": names.get(link.get_attr("IFLA_MASTER")),
            "peer_index": link.get_attr("IFLA_LINK"),
            "addresses": addresses.get(link["index"], []),
            "stats": dict(link.get_attr("IFLA_STATS64") or {}),
        })
    return rows


def links(netns: str | None = None) -> list[dict[str, Any]]:
    """Every network device of the host (``netns`` None) or of a named namespace,
    read over netlink: name, kind, state, MAC, bridge, veth peer, IPv4 addresses,
    counters."""
    return in_netns(netns, _link_rows)


def _route_lines(ipr: Any) -> list[str]:
    import socket          # here, not on the run path; pyroute2 has loaded it already

    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    lines = []
    for r in ipr.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN):
        dst = r.get_attr("RTA_DST")
        line = f"{dst}/{r['dst_len']}" if dst else "default"
        if r.get_attr("RTA_GATEWAY"):
            line += f" via {r.get_attr('RTA_GATEWAY')}"
        lines.append(f"{line} dev {names.get(r.get_attr('RTA_OIF'))}")
    return lines


def routes(netns: str | None = None) -> list[str]:
    """The IPv4 main routing table of the host or of a named namespace, one line a route."""
    return in_netns(netns, _route_lines)


def lab_namespaces() -> list[str]:
    """The named network namespaces labkit made (labkit-10.88.X.Y), by address."""
    if not os.path.isdir(NETNS_DIR):
        return []
    found = []
    for name in os.listdir(NETNS_DIR):
        try:
            found.append((ipaddress.IPv4Address(name.removeprefix("labkit-")), name))
        except ValueError:
            continue                      # not one of ours
    return [name for _, name in sorted(found)]
