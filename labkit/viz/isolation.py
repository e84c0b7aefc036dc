"""What is isolated so far: a grid that grows as primitives are added to a container.

One row per build step (the primitives so far), one column per thing a
process can share with the host or have of its own: processes, hostname,
IPC objects, files, network, cgroup tree, limits, capabilities ... A cell is
filled when the container observed *its own* (the notebook decides that from
live observations: namespace inodes, /proc, the trace); empty when it still
shares the host's.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

OWN = "#4c9f70"      # the container's own
SHARED = "#e6e6e6"   # still the host's


def draw(rows: dict[str, dict[str, bool]], columns: list[str]) -> Figure:
    """The grid: ``rows`` maps a step's label to {column: isolated?}, in build order."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.95 * len(columns), 0.9 + 0.42 * len(rows)))
    for y, (_label, cells) in enumerate(rows.items()):
        for x, column in enumerate(columns):
            own = cells.get(column, False)
            ax.add_patch(plt.Rectangle((x, y), 0.94, 0.86, color=OWN if own else SHARED))
            ax.text(x + 0.47, y + 0.43, "own" if own else "host's", ha="center", va="center",
                    fontsize=8, color="white" if own else "#777777")
    ax.set_xlim(0, len(columns))
    ax.set_ylim(len(rows), 0)
    ax.set_xticks([x + 0.47 for x in range(len(columns))], columns, rotation=30, ha="right", fontsize=9)
    ax.set_yticks([y + 0.43 for y in range(len(rows))], list(rows), fontsize=9)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title("isolated so far: what the container has of its own, step by step", fontsize=10)
    fig.tight_layout()
    return fig
