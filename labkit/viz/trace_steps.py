"""The seed's five steps for one syscall, drawn from a trace, and a player to step through them.

syscall -> namespace -> cgroup -> capability/check -> execute or deny. Each
box shows the real values of the record (its namespace inode, its cgroup
limit, the capability checks tracefs recorded); the step that decided the
outcome is highlighted, red when the call failed there.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..trace import STEPS, Record, Trace

TITLES = {"syscall": "1 syscall", "namespace": "2 namespace", "cgroup": "3 cgroup",
          "capability": "4 capability / check", "execute": "5 execute or deny"}


def step_texts(trace: Trace, rec: Record) -> dict[str, str]:
    """What each step saw for ``rec``, in words (the values are the kernel's)."""
    caps = [c for c in rec.checks(trace) if c.startswith("CAP_")]
    cg = rec.cgroup
    return {
        "syscall": f"{rec.syscall}\npid {rec.pid}",
        "namespace": (f"{rec.namespace} ns ({rec.ns_owner}'s)\ninode {rec.ns_inode}\n"
                      "[namespaces(7) table]") if rec.namespace else "no namespace\nconsulted",
        "cgroup": (f"{cg['controller']}: limit {cg.get('limit') or 'none'}\n"
                   f"peak usage {cg.get('usage')}") if cg else "no cgroup limit\napplies",
        "capability": "\n".join(sorted(set(caps))[:3])
                      if caps else ("no capability check" if trace.capability_source
                                    else "capability checks\nnot traceable here"),
        "execute": f"{rec.result()}\n{rec.verdict}",
    }


def draw(trace: Trace, rec: Record, ax: plt.Axes | None = None) -> Figure:
    """Five boxes left to right; the deciding step is filled (red if it denied)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 2.6))
    texts = step_texts(trace, rec)
    failed = rec.errno is not None or rec.verdict == "killed"
    for i, step in enumerate(STEPS):
        deciding = step == rec.deciding
        color = ("#e06666" if failed else "#93c47d") if deciding else "#eeeeee"
        ax.add_patch(plt.Rectangle((i * 1.2, 0), 1.0, 1.0, color=color, ec="black"))
        ax.text(i * 1.2 + 0.5, 0.85, TITLES[step], ha="center", fontsize=9, weight="bold")
        wrapped = "\n".join(textwrap.fill(line, 22) for line in texts[step].split("\n"))
        ax.text(i * 1.2 + 0.5, 0.42, wrapped, ha="center", va="center", fontsize=7.5)
        if i:
            ax.annotate("", (i * 1.2, 0.5), (i * 1.2 - 0.2, 0.5), arrowprops={"arrowstyle": "->"})
    ax.set_xlim(-0.1, len(STEPS) * 1.2)
    ax.set_ylim(-0.05, 1.05)
    ax.axis("off")
    ax.set_title(f"{rec.syscall} = {rec.result()}: decided at step '{rec.deciding}'", fontsize=10)
    return ax.figure


def player(trace: Trace, records: list[Record]):
    """ipywidgets Play + slider over ``records``, redrawing the five steps."""
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
