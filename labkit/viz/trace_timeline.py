"""A trace as a timeline: one row per process, one mark per syscall, colored by verdict."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..trace import Record, Trace

COLORS = {"allowed": "#6aa84f", "failed": "#f1c232", "denied": "#cc0000", "killed": "#990000",
          "exited": "#666666", "kernel event": "#3d85c6"}


def color_of(rec: Record) -> str:
    return COLORS.get(rec.verdict.split()[0], "#999999") if rec.verdict else "#999999"


def draw(trace: Trace, records: list[Record], labels: bool = True) -> Figure:
    """x: ms since the first event; y: process; failed and denied calls are named."""
    pids = list(dict.fromkeys(r.pid for r in records))
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.5 * len(pids)))
    for r in records:
        y = pids.index(r.pid)
        x = (r.start - trace.t0) * 1000
        ax.plot([x], [y], "|", markersize=14, color=color_of(r))
        if labels and (r.errno or r.verdict in ("killed", "kernel event") or r.deciding != "execute"):
            ax.annotate(f"{r.syscall} {r.result()}", (x, y), (x, y + 0.25), fontsize=7, rotation=20)
    ax.set_yticks(range(len(pids)), [f"pid {p}" for p in pids])
    ax.set_ylim(-0.5, len(pids) - 0.2)
    ax.set_xlabel("ms since the trace's first event")
    for name, color in COLORS.items():
        ax.plot([], [], "|", color=color, label=name, markersize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(f"{len(records)} syscalls and kernel events, lost events: {trace.lost}")
    fig.tight_layout()
    return fig
