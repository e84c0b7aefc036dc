"""A trace as a Mermaid sequence diagram (JupyterLab renders ```mermaid blocks natively)."""

from __future__ import annotations

from ..trace import Record, Trace


def sequence(trace: Trace, records: list[Record]) -> str:
    """The seed's flow for each record: App -> Kernel -> Namespace -> cgroup -> Check -> result."""
    lines = ["sequenceDiagram", "    participant App as container process", "    participant K as kernel",
             "    participant NS as namespace", "    participant CG as cgroup",
             "    participant CAP as capability check"]
    for r in records:
        lines.append(f"    App->>K: {r.syscall}()")
        if r.namespace:
            lines.append(f"    K->>NS: look up in the {r.ns_owner}'s {r.namespace} namespace")
        if r.cgroup:
            lines.append(f"    K->>CG: {r.cgroup['controller']} limit {r.cgroup.get('limit') or 'none'}")
        for check in dict.fromkeys(c for c in r.checks(trace) if c.startswith("CAP_")):
            lines.append(f"    K->>CAP: {check.replace(':', ' ->')}")
        arrow = "-->>" if r.errno is None and r.verdict != "killed" else "--x"
        decided = "" if r.deciding == "execute" else f" (decided at {r.deciding})"
        lines.append(f"    K{arrow}App: {r.result()}{decided}")
    return "\n".join(lines)


def show(trace: Trace, records: list[Record]) -> None:
    """Display the diagram in a notebook."""
    from IPython.display import Markdown, display

    display(Markdown(f"```mermaid\n{sequence(trace, records)}\n```"))
