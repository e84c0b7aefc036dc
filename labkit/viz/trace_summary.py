"""A trace summed up per namespace and per cgroup controller: how many calls, which verdicts."""

from __future__ import annotations

from collections import Counter

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..trace import Record, Trace


def by_namespace(records: list[Record]) -> dict[str, Counter]:
    """'uts ns (container's)' -> Counter of verdict words, from the namespaces(7) table."""
    table: dict[str, Counter] = {}
    for r in records:
        if r.namespace:
            key = f"{r.namespace} ns ({r.ns_owner}'s)"
            table.setdefault(key, Counter())[r.verdict.split()[0]] += 1
    return dict(sorted(table.items()))


def by_cgroup(records: list[Record]) -> dict[str, Counter]:
    """'pids (limit 3)' -> Counter of verdict words."""
    table: dict[str, Counter] = {}
    for r in records:
        if r.cgroup:
            key = f"{r.cgroup['controller']} (limit {r.cgroup.get('limit') or 'none'})"
            table.setdefault(key, Counter())[r.verdict.split()[0]] += 1
    return dict(sorted(table.items()))


def text(trace: Trace, records: list[Record]) -> str:
    """The two tables as text, one line per namespace or controller."""
    lines = ["namespace (from the namespaces(7) table)  calls  verdicts"]
    for key, counts in by_namespace(records).items():
        lines.append(f"  {key:<40} {sum(counts.values()):5}  {dict(counts)}")
    lines.append("cgroup controller                        calls  verdicts")
    for key, counts in by_cgroup(records).items():
        lines.append(f"  {key:<40} {sum(counts.values()):5}  {dict(counts)}")
    return "\n".join(lines)


def draw(trace: Trace, records: list[Record]) -> Figure:
    """Stacked bars: calls per namespace and per cgroup controller, by verdict."""
    groups = {**by_namespace(records), **{f"cgroup {k}": v for k, v in by_cgroup(records).items()}}
    verdicts = ["allowed", "failed", "denied", "killed", "exited"]
    colors = ["#6aa84f", "#f1c232", "#cc0000", "#990000", "#666666"]
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.45 * len(groups)))
    names = list(groups)
    left = [0] * len(names)
    for verdict, color in zip(verdicts, colors):
        widths = [groups[n].get(verdict, 0) for n in names]
        ax.barh(names, widths, left=left, color=color, label=verdict)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("syscalls")
    ax.legend(fontsize=8, loc="lower right")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
