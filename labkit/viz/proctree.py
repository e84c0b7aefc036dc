"""Two views of one process tree: the host's PIDs beside the container's.

The same processes, drawn twice: on the left as the host numbers them (with
the launcher that started the container), on the right as the container's own
PID namespace numbers them, from PID 1. Read from /proc, live.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..pid import ProcessEntry


def _depths(entries: list[ProcessEntry], root: int) -> dict[int, int]:
    """Depth of each host PID below ``root`` (its parent links, from /proc)."""
    by_pid = {e.host_pid: e for e in entries}
    depth: dict[int, int] = {}
    for e in entries:
        d, p = 0, e
        while p.host_pid != root and p.host_ppid in by_pid:
            d, p = d + 1, by_pid[p.host_ppid]
        depth[e.host_pid] = d
    return depth


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def draw(entries: list[ProcessEntry], title: str = "one process tree, two PID namespaces") -> Figure:
    """Draw host view (left) and container view (right) of ``entries``."""
    init = min(entries, key=lambda e: e.container_pid)
    depth = _depths(entries, init.host_pid)
    launcher = init.host_ppid
    fig, (host, box) = plt.subplots(1, 2, figsize=(10, 1.4 + 0.55 * len(entries)), sharey=True)
    rows = sorted(entries, key=lambda e: (e.container_pid))
    for ax, side in ((host, "host"), (box, "container")):
        ax.set_axis_off()
        ax.set_xlim(0, 10)
        ax.set_ylim(-len(rows) - 1.2, 0.8)
        ax.set_title(f"{side} view: /proc of the {side}'s PID namespace", fontsize=10)
    host.text(0.2, 0, f"PID {launcher}  {_comm(launcher)}  (the launcher, child A)",
              family="monospace", fontsize=9, color="gray", va="center")
    for i, e in enumerate(rows, start=1):
        x = 0.8 + 0.8 * depth[e.host_pid]
        host.text(x, -i, f"PID {e.host_pid}  {e.command}  [{e.state}]", family="monospace",
                  fontsize=9, va="center", bbox=dict(boxstyle="round", fc="#dde8f7", ec="#4a78b5"))
        box.text(x - 0.6, -i, f"PID {e.container_pid}  {e.command}  [{e.state}]", family="monospace",
                 fontsize=9, va="center", bbox=dict(boxstyle="round", fc="#e2f2dc", ec="#4c9a3a"))
    box.text(0.2, -len(rows) - 0.9, "nothing above PID 1 exists in here", fontsize=8,
             color="gray", style="italic")
    host.text(0.2, -len(rows) - 0.9, f"host: {sum(1 for p in os.listdir('/proc') if p.isdigit())}"
              " processes in all; the container's are a few of them", fontsize=8, color="gray",
              style="italic")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
