"""A trace as a Mermaid sequence diagram (JupyterLab renders ```mermaid blocks natively).

Each call goes through its family's checks in the kernel's order
(``checks.order``), up to the one that decided; a note on that check says how
it is known: observed (an event of the trace shows it, solid arrow) or
inferred (dashed arrow), with ``rec.basis``.
"""

from __future__ import annotations

from .. import checks
from ..trace import Record, Trace
from .trace_steps import boxes

PARTICIPANTS = {"seccomp": ("SC", "seccomp filter"), "capability": ("CAP", "capability check"),
                "namespace": ("NS", "namespace lookup"), "permission": ("PERM", "permission (mode bits)"),
                "cgroup": ("CG", "cgroup limit"), "execute": ("EX", "the call itself")}


def _text(s: str, width: int = 70) -> str:
    """Mermaid message text: one line, no ';' or '#' (statement separator, entity)."""
    s = " ".join(s.replace(";", ",").replace("#", "").split())
    return s if len(s) <= width else s[:width - 3] + "..."


def sequence(trace: Trace, records: list[Record]) -> str:
    """Container process -> kernel -> each check of the call's family, in order."""
    kinds = [k for k in checks.KINDS if any(c.kind == k for r in records for c in boxes(r)[0])]
    lines = ["sequenceDiagram", "    participant App as container process", "    participant K as kernel"]
    lines += [f"    participant {PARTICIPANTS[k][0]} as {PARTICIPANTS[k][1]}" for k in kinds]
    for r in records:
        order, decided = boxes(r)
        failed = r.errno is not None or r.verdict.startswith("killed")
        last = decided if failed and decided is not None else len(order) - 1
        lines.append(f"    App->>K: {r.syscall}()")
        for i, check in enumerate(order[:last + 1]):
            who = PARTICIPANTS[check.kind][0]
            arrow = "-->>" if i == decided and r.evidence != "observed" else "->>"
            lines.append(f"    K{arrow}{who}: {_text(check.what)}")
            if check.kind == "capability":
                for seen in dict.fromkeys(c for c in r.checks(trace) if c.startswith("CAP_")):
                    lines.append(f"    Note over {who}: {_text(seen)}")
            if i == decided:
                lines.append(f"    Note over {who}: {r.evidence}: {_text(r.basis or r.verdict, 90)}")
        arrow = "--x" if failed else "-->>"
        suffix = "" if r.deciding == "execute" else f" (decided at {r.deciding})"
        lines.append(f"    K{arrow}App: {r.result()}{suffix}")
    return "\n".join(lines)


def show(trace: Trace, records: list[Record]) -> None:
    """Display the diagram in a notebook."""
    from IPython.display import Markdown, display

    display(Markdown(f"```mermaid\n{sequence(trace, records)}\n```"))
