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
        if labels and (r.errno or r.deciding != "execute"):
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


def key_records(records: list[Record]) -> list[Record]:
    """The calls worth naming: denials (capability, cgroup), namespace failures other
    than ENOENT (a program probing paths fails many lookups), else the last failed lookup."""
    key = [r for r in records if not r.syscall.startswith("[") and
           (r.deciding in ("capability", "cgroup") or (r.deciding == "namespace" and r.errno != "ENOENT"))]
    lookups = [r for r in records if r.deciding == "namespace"]
    return key or lookups[-1:]


def draw_cases(cases: dict[str, Trace]) -> Figure:
    """One row per traced container, from its command's execve; failed and denied calls named."""
    fig, ax = plt.subplots(figsize=(12, 0.9 + 0.55 * len(cases)))
    for y, (name, trace) in enumerate(cases.items()):
        records = trace.command_records()
        start = records[0].start if records else 0.0
        for r in records:
            ax.plot([(r.start - start) * 1000], [y], "|", markersize=12, color=color_of(r))
        for r in key_records(records):
            x = (r.start - start) * 1000
            ax.annotate(f"{r.syscall} {r.errno or r.verdict.split()[0]}", (x, y), (x, y + 0.3),
                        fontsize=8, color=color_of(r))
    ax.set_yticks(range(len(cases)), list(cases))
    ax.set_ylim(-0.5, len(cases) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the command's execve")
    for name, color in COLORS.items():
        ax.plot([], [], "|", color=color, label=name, markersize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    lost = sum(t.lost for t in cases.values())
    ax.set_title(f"every syscall of {len(cases)} containers, colored by verdict (lost events: {lost})")
    fig.tight_layout()
    return fig
