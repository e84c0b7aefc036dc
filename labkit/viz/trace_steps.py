"""The kernel's checks of one syscall, in the kernel's order, drawn from a trace;
and a player to step through a trace's calls.

The boxes are ``checks.order(rec.syscall)``: that family's checks, first
first, each named with its source (labkit/checks.py). The check that decided
(``rec.deciding``) is highlighted, red when the call failed there, green when it
went through; filled when an event of the trace shows it (``rec.evidence`` ==
"observed"), hatched with a dashed edge when labkit inferred it (from the
errno; ``rec.basis`` says from what). Checks after a refusal were never
reached and are greyed out. The record's real values (its namespace inode, its
cgroup limit, the capability checks tracefs recorded) are written in the boxes
of their kind.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .. import checks
from ..trace import Record, Trace

RED, GREEN, PASSED, UNREACHED = "#e06666", "#93c47d", "#eeeeee", "#fafafa"


def step_texts(trace: Trace, rec: Record) -> dict[str, str]:
    """What the trace shows for each kind of check (checks.KINDS) in ``rec``, in
    words; the values are the kernel's."""
    caps = [c for c in rec.checks(trace) if c.startswith("CAP_")]
    cg = rec.cgroup
    return {
        "seccomp": ("refused before sys_enter" if rec.evidence == "observed" and rec.deciding == "seccomp"
                    else "filter passed the call"),
        "capability": "\n".join(sorted(set(caps))[:3])
                      if caps else ("no capability check seen" if trace.capability_source
                                    else "capability checks\nnot traceable here"),
        "namespace": (f"{rec.namespace} ns ({rec.ns_owner}'s)\ninode {rec.ns_inode}")
                     if rec.namespace else "",
        "permission": "",
        "cgroup": (f"{cg['controller']}: limit {cg.get('limit') or 'none'}\n"
                   f"peak usage {cg.get('usage')}") if cg else "",
        "execute": f"{rec.result()}\n{rec.verdict}",
    }


def _failed(rec: Record) -> bool:
    return rec.errno is not None or rec.verdict.startswith("killed")


def boxes(rec: Record) -> tuple[tuple[checks.Check, ...], int | None]:
    """The checks to draw for ``rec`` and the index of the deciding one:
    ``checks.order(rec.syscall)``; when the trace decided a kind that order lacks
    (a call outside every family), a box of that kind, marked as such, before the
    last one."""
    order = checks.order(rec.syscall)
    decided = checks.deciding_index(rec.syscall, rec.deciding, rec.errno)
    if decided is None and rec.deciding in checks.KINDS:
        extra = checks.Check(rec.deciding, f"{rec.deciding} (not in checks.ORDER for {rec.syscall})",
                             "labkit/checks.py", ())
        order, decided = (*order[:-1], extra, order[-1]), len(order) - 1
    return order, decided


def draw(trace: Trace, rec: Record, ax: plt.Axes | None = None) -> Figure:
    """The checks of ``rec``'s family left to right; the deciding one highlighted."""
    order, decided = boxes(rec)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(8.0, 2.0 * len(order)), 3.2))
    texts = step_texts(trace, rec)
    failed = _failed(rec)
    inferred = rec.evidence != "observed"
    for i, check in enumerate(order):
        x = i * 1.2
        here = i == decided
        unreached = failed and decided is not None and i > decided
        face = (RED if failed else GREEN) if here else (UNREACHED if unreached else PASSED)
        ax.add_patch(Rectangle((x, 0), 1.0, 1.0, facecolor="white" if here and inferred else face,
                               edgecolor=face if here and inferred else "black",
                               hatch="///" if here and inferred else None,
                               linestyle="--" if here and inferred else "-",
                               linewidth=2 if here else 1))
        color = "#999999" if unreached else "black"
        ax.text(x + 0.5, 0.9, f"{i + 1} {check.kind}", ha="center", fontsize=9, weight="bold", color=color)
        what = textwrap.fill(check.what, 24, max_lines=4, placeholder="...")
        ax.text(x + 0.5, 0.62, what, ha="center", va="center", fontsize=6.5, color=color)
        value = texts.get(check.kind, "") if here or check.kind != "execute" else ""
        if value and not unreached:
            wrapped = "\n".join(textwrap.fill(line, 24) for line in value.split("\n"))
            ax.text(x + 0.5, 0.2, wrapped, ha="center", va="center", fontsize=6.5, style="italic",
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
        if i:
            ax.annotate("", (x, 0.5), (x - 0.2, 0.5), arrowprops={"arrowstyle": "->"})
    ax.legend(handles=[Patch(facecolor=RED, edgecolor="black", label="decided here (observed: an event shows it)"),
                       Patch(facecolor="white", edgecolor=RED, hatch="///", linestyle="--",
                             label="decided here (inferred)"),
                       Patch(facecolor=UNREACHED, edgecolor="black", label="not reached")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=7, frameon=False)
    if rec.basis:
        ax.text(0, -0.32, textwrap.fill(f"{rec.evidence}: {rec.basis}", 160), fontsize=7, va="top")
    ax.set_xlim(-0.1, len(order) * 1.2)
    ax.set_ylim(-0.45, 1.05)
    ax.axis("off")
    ax.set_title(f"{rec.syscall} = {rec.result()}: decided at step '{rec.deciding}'", fontsize=10)
    return ax.figure


def player(trace: Trace, records: list[Record]):
    """ipywidgets Play + slider over ``records``, redrawing each call's checks."""
    import ipywidgets as widgets
    from IPython.display import display

    play = widgets.Play(min=0, max=len(records) - 1, interval=1500, description="play")
    slider = widgets.IntSlider(min=0, max=len(records) - 1, description="syscall")
    widgets.jslink((play, "value"), (slider, "value"))
    out = widgets.Output()

    def show(change: dict | None = None) -> None:
        with out:
            out.clear_output(wait=True)
            fig = draw(trace, records[slider.value])
            plt.show()
            plt.close(fig)

    slider.observe(show, names="value")
    show()
    display(widgets.VBox([widgets.HBox([play, slider]), out]))
