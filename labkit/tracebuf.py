"""Reading a tracing instance's buffer: the kernel's events as Python objects.

tracefs prints each event of an instance's ring buffer as one line of its
``trace`` file: ``COMM-PID [CPU] FLAGS TIMESTAMP: EVENT: FIELDS``, the fields
formatted by the event's ``print fmt`` (events/SYSTEM/EVENT/format;
Documentation/trace/ftrace.rst, "The File System" and "Output format").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

_LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?"
                   r"(?P<ts>\d+\.\d+): (?P<event>\w+): (?P<body>.*)$")
_FIELD = re.compile(r"([\w-]+)[=: ]\s*([^\s,]+)")


@dataclass
class Event:
    """One kernel event, as tracefs printed it."""

    ts: float
    pid: int
    name: str                       # e.g. cap_capable, signal_generate, mark_victim
    fields: dict[str, str]


def parse(lines: Iterable[str]) -> list[Event]:
    """Events from tracefs's text format ('comm-PID [CPU] flags TS: event: fields')."""
    events = []
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue                            # comment header lines start with '#'
        name, body = m.group("event"), m.group("body")
        if name == "sys_enter":                 # "NR 1 (a0, a1, ...)"
            nr, _, args = body.partition(" (")
            fields = {"NR": nr.split()[1], "args": args.rstrip(")")}
        elif name == "sys_exit":                # "NR 1 = -2"
            parts = body.split()
            fields = {"NR": parts[1], "ret": parts[3]}
        else:
            fields = dict(_FIELD.findall(body))
        events.append(Event(float(m.group("ts")), int(m.group("pid")), name, fields))
    return events
