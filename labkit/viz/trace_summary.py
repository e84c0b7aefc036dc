"""A trace summed up per namespace and per cgroup controller: how many calls, which
verdicts, and how each verdict's deciding check is known.

The grouping is a table, not an event: ``Record.namespace`` is the namespace type
whose resource the call names (namespaces(7)), ``Record.cgroup`` the controller
whose limit it can run into (cgroups(7)). Each count says its evidence: a call
that failed "(inferred)" rests on labkit's reading of the errno, "(observed)" on
an event of the call (``Record.basis`` says which). An allowed call is observed:
its sys_exit returned.
"""

from __future__ import annotations

from collections import Counter

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..trace import OBSERVED, Record, Trace

VERDICTS = ("allowed", "failed", "denied", "killed", "exited")
COLORS = dict(zip(VERDICTS, ("#6aa84f", "#f1c232", "#cc0000", "#990000", "#666666")))


def label(r: Record) -> str:
    """'allowed', or the verdict's word with its evidence: 'failed (inferred)'."""
    word = r.verdict.split()[0] if r.verdict else "?"
    return word if word == "allowed" else f"{word} ({r.evidence})"


def by_namespace(records: list[Record]) -> dict[str, Counter]:
    """'uts ns (container's)' -> Counter of labels, grouped by the namespaces(7) table."""
    table: dict[str, Counter] = {}
    for r in records:
        if r.namespace:
            key = f"{r.namespace} ns ({r.ns_owner}'s)"
            table.setdefault(key, Counter())[label(r)] += 1
    return dict(sorted(table.items()))


def by_cgroup(records: list[Record]) -> dict[str, Counter]:
    """'pids (limit 3)' -> Counter of labels."""
    table: dict[str, Counter] = {}
    for r in records:
        if r.cgroup:
            key = f"{r.cgroup['controller']} (limit {r.cgroup.get('limit') or 'none'})"
            table.setdefault(key, Counter())[label(r)] += 1
    return dict(sorted(table.items()))


def text(trace: Trace, records: list[Record]) -> str:
    """The two tables as text, one line per namespace or controller."""
    lines = ["namespace (from the namespaces(7) table)  calls  verdicts (evidence)"]
    for key, counts in by_namespace(records).items():
        lines.append(f"  {key:<40} {sum(counts.values()):5}  {dict(counts)}")
    lines.append("cgroup controller (cgroups(7) table)     calls  verdicts (evidence)")
    for key, counts in by_cgroup(records).items():
        lines.append(f"  {key:<40} {sum(counts.values()):5}  {dict(counts)}")
    return "\n".join(lines)


def draw(trace: Trace, records: list[Record]) -> Figure:
    """Stacked bars: calls per namespace and per cgroup controller, by verdict;
    solid when observed, hatched when inferred, pale when unknown."""
    groups = {**by_namespace(records), **{f"cgroup {k}": v for k, v in by_cgroup(records).items()}}
    labels = sorted({k for c in groups.values() for k in c},
                    key=lambda k: (VERDICTS.index(k.split()[0]) if k.split()[0] in VERDICTS else 9, k))
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.45 * len(groups)))
    names = list(groups)
    left = [0] * len(names)
    for key in labels:
        word = key.split()[0]
        observed = word == "allowed" or f"({OBSERVED})" in key
        widths = [groups[n].get(key, 0) for n in names]
        ax.barh(names, widths, left=left, color=COLORS.get(word, "#999999"), label=key,
                hatch=None if observed else "///", edgecolor="white" if observed else "black",
                alpha=0.45 if "(unknown)" in key else 1.0)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("syscalls (grouped by the namespaces(7) and cgroups(7) tables)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
