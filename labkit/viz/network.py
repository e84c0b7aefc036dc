"""The lab network's topology, drawn from the kernel's live state (pyroute2).

Nothing here is hand-written: the bridge, its ports, each container's devices
and addresses are read over netlink, and each veth pair is matched by the
kernel's own peer link (IFLA_LINK: the host end names the index of its peer
in the other namespace, and the peer names the host end's).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from .. import net


def read_topology() -> dict[str, Any]:
    """The host's devices, bridge labkit0 and its ports, and every lab namespace
    with its devices; ``pairs`` maps a host veth to the namespace of its peer."""
    host = net.links()
    containers = {ns: net.links(ns) for ns in net.lab_namespaces()}
    pairs: dict[str, str] = {}
    for ns, devices in containers.items():
        for dev in devices:
            for end in host:
                if (end["kind"] == "veth" and end["peer_index"] == dev["index"]
                        and dev["peer_index"] == end["index"]):
                    pairs[end["name"]] = ns
    bridge = next((d for d in host if d["name"] == net.BRIDGE), None)
    ports = [d for d in host if bridge and d["master"] == net.BRIDGE]
    return {"host": host, "bridge": bridge, "ports": ports, "containers": containers, "pairs": pairs}


def _box(ax: Any, x: float, y: float, w: float, h: float, text: str, color: str,
         size: int = 9, weight: str = "normal") -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.01",
                                facecolor=color, edgecolor="black", linewidth=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, weight=weight)


def draw(topology: dict[str, Any] | None = None,
         title: str = "the lab network, read live from the kernel") -> Figure:
    """Host namespace on top (its own devices, bridge labkit0, the veth host ends),
    one box per container namespace below, a line for each veth pair."""
    topo = topology or read_topology()
    names = list(topo["containers"])
    width = max(3, len(names))
    fig, ax = plt.subplots(figsize=(3.2 * width, 6))
    ax.set_xlim(0, width)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_title(title)

    # The host's network namespace.
    ax.add_patch(FancyBboxPatch((0.05, 0.5), width - 0.1, 0.47, boxstyle="round,pad=0.01",
                                facecolor="#f2f2f2", edgecolor="grey", zorder=0))
    ax.text(0.1, 0.95, "host network namespace", fontsize=10, weight="bold", va="top")
    own = [d for d in topo["host"] if d["kind"] not in ("veth", "bridge")]
    ax.text(0.1, 0.9, "its own devices, untouched:  " +
            "   ".join(f"{d['name']} {' '.join(d['addresses'])}".strip() for d in own),
            fontsize=8, va="top", family="monospace")
    bridge = topo["bridge"]
    if bridge:
        _box(ax, width / 2, 0.8, min(width - 0.6, 2.0), 0.07,
             f"bridge {bridge['name']}  {' '.join(bridge['addresses'])}", "#ffd27f", weight="bold")
    columns = {ns: i + 0.5 for i, ns in enumerate(names)}
    for i, port in enumerate(topo["ports"]):
        ns = topo["pairs"].get(port["name"])
        x = columns.get(ns, (i + 0.5) * width / max(1, len(topo["ports"])))
        _box(ax, x, 0.6, 0.8, 0.07, f"{port['name']} (veth)", "#ffe9bf")
        ax.plot([x, width / 2], [0.635, 0.765], color="black", linewidth=1, zorder=0.5)

    # One box per container namespace.
    for ns, x in columns.items():
        ax.add_patch(FancyBboxPatch((x - 0.45, 0.05), 0.9, 0.35, boxstyle="round,pad=0.01",
                                    facecolor="#dbeafe", edgecolor="#3b6fb6", zorder=0))
        ax.text(x, 0.37, f"netns {ns}", ha="center", fontsize=8, weight="bold")
        devices = {d["name"]: d for d in topo["containers"][ns]}
        for name, y in (("eth0", 0.25), ("lo", 0.12)):
            dev = devices.get(name)
            if dev:
                _box(ax, x, y, 0.8, 0.07, f"{name} {' '.join(dev['addresses'])}",
                     "#bfdbfe" if name == "eth0" else "white", size=8)
        host_end = next((p for p, n in topo["pairs"].items() if n == ns), None)
        if host_end:
            ax.plot([x, x], [0.565, 0.29], color="#3b6fb6", linewidth=2.5, zorder=0.5)
            ax.text(x + 0.03, 0.46, "veth pair", fontsize=7, color="#3b6fb6")
    fig.tight_layout()
    return fig
