"""A trace as a timeline: one row per process, one tick per syscall, colored by verdict.

A call that failed, was denied or was killed also gets a circle saying how its
deciding check is known (``Record.evidence``): filled when an event of the trace
shows it (observed), hollow when it is labkit's reading of the errno
(inferred), a question mark when neither (unknown). The errno itself is always
observed: it is the ``ret`` of the call's ``raw_syscalls:sys_exit``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..trace import INFERRED, OBSERVED, UNKNOWN, Record, Trace

COLORS = {"allowed": "#6aa84f", "failed": "#f1c232", "denied": "#cc0000", "killed": "#990000",
          "exited": "#666666", "kernel event": "#3d85c6"}
# How each evidence is drawn: (marker, filled).
MARKERS = {OBSERVED: ("o", True), INFERRED: ("o", False), UNKNOWN: ("$?$", True)}
EVIDENCE_LABELS = {OBSERVED: "observed: an event shows the deciding check",
                   INFERRED: "inferred from the errno, no event shows it",
                   UNKNOWN: "unknown"}


def color_of(rec: Record) -> str:
    return COLORS.get(rec.verdict.split()[0], "#999999") if rec.verdict else "#999999"


def decided_somewhere(rec: Record) -> bool:
    """A call whose deciding check is worth a mark: it failed, was denied or was killed."""
    return not rec.syscall.startswith("[") and (rec.errno is not None or rec.deciding != "execute"
                                                or rec.verdict.startswith("killed"))


def _mark(ax: Axes, x: float, y: float, rec: Record) -> None:
    """The evidence circle of one record, a little above its tick."""
    marker, filled = MARKERS[rec.evidence]
    color = color_of(rec)
    ax.plot([x], [y - 0.18], linestyle="none", marker=marker, markersize=7, color=color,
            markerfacecolor=color if filled else "white", markeredgewidth=1.3)


def _legend(ax: Axes) -> None:
    for name, color in COLORS.items():
        ax.plot([], [], "|", color=color, label=name, markersize=10)
    for evidence, label in EVIDENCE_LABELS.items():
        marker, filled = MARKERS[evidence]
        ax.plot([], [], linestyle="none", marker=marker, color="#444444",
                markerfacecolor="#444444" if filled else "white", label=label, markersize=7)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)


def draw(trace: Trace, records: list[Record], labels: bool = True) -> Figure:
    """x: ms since the first event; y: process; failed and denied calls are named,
    with a filled (observed) or hollow (inferred) circle."""
    pids = list(dict.fromkeys(r.pid for r in records))
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.5 * len(pids)))
    for r in records:
        y = pids.index(r.pid)
        x = (r.start - trace.t0) * 1000
        ax.plot([x], [y], "|", markersize=14, color=color_of(r))
        if decided_somewhere(r):
            _mark(ax, x, y, r)
            if labels:
                ax.annotate(f"{r.syscall} {r.result()}", (x, y), (x, y + 0.25), fontsize=7, rotation=20)
    ax.set_yticks(range(len(pids)), [f"pid {p}" for p in pids])
    ax.set_ylim(-0.5, len(pids) - 0.2)
    ax.set_xlabel("ms since the trace's first event")
    _legend(ax)
    ax.set_title(f"{len(records)} syscalls and kernel events, lost events: {trace.lost}")
    fig.tight_layout()
    return fig


def key_records(records: list[Record]) -> list[Record]:
    """The calls worth naming: those an event shows decided (a capability, the cgroup,
    seccomp, the OOM killer), and failures whose errno a check of the call's family
    could answer (``Record.candidates``) other than ENOENT (a program probing paths
    fails many lookups); if none, the last such ENOENT."""
    named = [r for r in records if decided_somewhere(r)]
    observed = [r for r in named if r.evidence == OBSERVED and r.deciding != "execute"]
    explained = [r for r in named if r.evidence != OBSERVED and r.candidates()]
    key = observed + [r for r in explained if r.errno != "ENOENT"]
    return sorted(key, key=lambda r: r.start) or explained[-1:]


def draw_cases(cases: dict[str, Trace]) -> Figure:
    """One row per traced container, from its command's execve; the key calls named,
    each with its evidence circle."""
    fig, ax = plt.subplots(figsize=(12, 0.9 + 0.55 * len(cases)))
    for y, (_name, trace) in enumerate(cases.items()):
        records = trace.command_records()
        start = records[0].start if records else 0.0
        for r in records:
            ax.plot([(r.start - start) * 1000], [y], "|", markersize=12, color=color_of(r))
        for r in key_records(records):
            x = (r.start - start) * 1000
            _mark(ax, x, y, r)
            ax.annotate(f"{r.syscall} {r.errno or r.verdict.split()[0]}", (x, y), (x, y + 0.3),
                        fontsize=8, color=color_of(r))
    ax.set_yticks(range(len(cases)), list(cases))
    ax.set_ylim(-0.5, len(cases) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the command's execve")
    _legend(ax)
    lost = sum(t.lost for t in cases.values())
    ax.set_title(f"every syscall of {len(cases)} containers, colored by verdict (lost events: {lost})")
    fig.tight_layout()
    return fig
