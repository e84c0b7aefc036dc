"""Reading a tracing instance's buffer: the kernel's events as Python objects.

Two ways to the same events (Documentation/trace/ftrace.rst, "The File System"):

- the text: the instance's ``trace`` file prints each event as one line,
  ``COMM-PID [CPU] FLAGS TIMESTAMP: EVENT: FIELDS``, the fields formatted by
  the event's ``print fmt`` (events/SYSTEM/EVENT/format). ``parse()`` reads it.
- the binary: ``per_cpu/cpuN/trace_pipe_raw`` hands out the ring buffer's own
  pages, one sub-buffer a read(2) (kernel/trace/trace.c, tracing_buffers_read),
  and consumes them. ``read_raw()`` decodes them with the layouts the kernel
  publishes: the page header in ``events/header_page``, the event header in
  ``events/header_event``, each event's fields in ``events/SYSTEM/EVENT/format``.
  The kernel then formats nothing and Python parses no text: on 400k events
  the binary took a fourth to a fifth of the text's time on the machine where
  it was measured (benchmarks/trace_overhead.py prints both).

Both give ``Event``s whose ``fields`` are strings keyed by the names the
``print fmt`` prints (so ``sched_process_fork``'s parent is ``pid``, as in the
text). One difference: a ``%p`` pointer (cap_capable's ``target_ns``) is the
raw address in the binary, while the text prints it hashed (option ``hash-ptr``);
compare pointers only with pointers read the same way.

Trace itself reads ``Item``s, plain tuples (``items()``): on a trace of 200k
syscalls, an Event object for each of the 400k events cost more than the
records built from them.
"""

from __future__ import annotations

import errno
import gc
import os
import re
import struct
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Iterable, Iterator, NamedTuple

_LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?"
                   r"(?P<ts>\d+\.\d+): (?P<event>\w+): (?P<body>.*)$")
_FIELD = re.compile(r"([\w-]+)[=: ]\s*([^\s,]+)")


class Event:
    """One kernel event: when (``ts``, seconds), which task (``pid``), what
    (``name``: sys_enter, cap_capable, ...) and its ``fields`` as tracefs prints
    them (strings, keyed by the names its print fmt prints).

    The two raw_syscalls events also carry their numbers in ``values``: sys_enter
    (NR, arg0, ..., arg5), sys_exit (NR, ret). The binary reader fills only
    ``values`` and ``fields`` is built from them on first use: a trace of 100k
    syscalls need not print 1.2M numbers that nobody reads.
    """

    __slots__ = ("ts", "pid", "name", "values", "_fields")

    def __init__(self, ts: float, pid: int, name: str, fields: dict[str, str] | None = None,
                 values: tuple[int, ...] = ()) -> None:
        self.ts, self.pid, self.name, self.values, self._fields = ts, pid, name, values, fields

    @property
    def fields(self) -> dict[str, str]:
        if self._fields is None:
            v = self.values
            self._fields = ({"NR": str(v[0]), "ret": str(v[1])} if self.name == "sys_exit" else
                            {"NR": str(v[0]), "args": ", ".join(f"{a:x}" for a in v[1:])})
        return self._fields

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and (self.ts, self.pid, self.name, self.fields) == \
            (other.ts, other.pid, other.name, other.fields)

    def __repr__(self) -> str:
        return f"Event(ts={self.ts!r}, pid={self.pid}, name={self.name!r}, fields={self.fields!r})"


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while building many objects,
    and keep it from walking them afterwards.

    The collector runs after every 700 new objects that can hold others, and
    its older generations' passes walk everything still alive: building 400k
    events and 200k records, it spent as long as the building itself
    (benchmarks/trace_overhead.py). Paused, it does not run, but the objects
    wait in its youngest generation, and the first collection after the pause
    walked all of them, then again as they aged.
    So, before switching it back on, ``gc.freeze()`` moves every object alive
    into the permanent generation, which no collection walks (Python's gc
    module documentation). Events and records form no cycles: reference
    counting still frees them. The price: a cycle of garbage that happens to be
    alive at that moment is never collected.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()


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
            args = args.rstrip(")")
            fields = {"NR": nr.split()[1], "args": args}
            values = (int(fields["NR"]), *(int(a, 16) for a in args.split(", ")))
        elif name == "sys_exit":                # "NR 1 = -2"
            parts = body.split()
            fields = {"NR": parts[1], "ret": parts[3]}
            values = (int(parts[1]), int(parts[3]))
        else:
            fields, values = dict(_FIELD.findall(body)), ()
        events.append(Event(float(m.group("ts")), int(m.group("pid")), name, fields, values))
    return events


def read_text(instance: str) -> list[Event]:
    """The instance's buffer through its ``trace`` file (not consumed)."""
    with open(f"{instance}/trace") as f:
        return parse(f)


def read(instance: str) -> list[Event]:
    """The instance's buffer, consumed: its binary pages, or its text where the
    kernel has no ``trace_pipe_raw`` or is big-endian (the event header's bit
    fields, type_len first, are laid out low bits first only on little-endian)."""
    if binary(instance):
        return read_raw(instance)
    return _read_text_consumed(instance)


def items(instance: str) -> list["Item"]:
    """As read(), as Items (see Item): what Trace turns into records."""
    if binary(instance):
        return read_items(instance)
    return [(e.ts, e.pid, e.name, e.values if e.values else e.fields)
            for e in _read_text_consumed(instance)]


def binary(instance: str) -> bool:
    """Can ``instance`` be read through its binary pages (see read())?"""
    return sys.byteorder == "little" and os.path.exists(f"{instance}/per_cpu/cpu0/trace_pipe_raw")


def _read_text_consumed(instance: str) -> list[Event]:
    events = read_text(instance)
    with open(f"{instance}/trace", "w"):        # O_TRUNC empties the buffer, as trace_pipe would
        pass
    return events


# --- the binary format ----------------------------------------------------------

# include/linux/ring_buffer.h, enum ring_buffer_type: the event header's type_len
# (5 bits; the other 27 are time_delta) says what follows. 1..28: data of
# type_len * 4 bytes; 0: the data's length is the next u32 (array[0], which
# counts itself); 29: padding (a discarded event, or with time_delta 0 and
# array[0] 0 the end of the page's data); 30: a time extend; 31: an absolute
# time stamp (kernel/trace/ring_buffer.c, rb_event_length, rb_update_read_stamp).
PADDING, TIME_EXTEND, TIME_STAMP = 29, 30, 31
TS_SHIFT = 27                                   # ring_buffer.c: array[0] << TS_SHIFT + time_delta
# ring_buffer.c: flags in the page's commit word (ring_buffer_read_page).
RB_MISSED_FLAGS = (1 << 31) | (1 << 30)


@dataclass
class _Field:
    offset: int
    size: int
    signed: bool
    data_loc: bool                              # __data_loc: u32 = length << 16 | offset
    array: bool                                 # char comm[16] and the like


class _Printed(NamedTuple):
    """One conversion of a print fmt: 'label=PREFIX%conv' printing REC->field."""

    label: str
    prefix: str                                 # literal text before the value, e.g. 0x
    field: str
    conv: str                                   # d i u x X p s c
    choices: tuple[str, str] | None             # REC->x ? "true" : "false"


class Format:
    """One event's layout and print format, from events/SYSTEM/EVENT/format."""

    _FIELD = re.compile(r"field:(?P<decl>[^;]*);\s*offset:(\d+);\s*size:(\d+);\s*signed:(\d+);")
    _CONV = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?(?:hh|h|ll|l|L|z)?([diuxXpsc])")

    def __init__(self, text: str) -> None:
        self.name = re.search(r"^name: (\S+)", text, re.M).group(1)
        self.id = int(re.search(r"^ID: (\d+)", text, re.M).group(1))
        self.fields: dict[str, _Field] = {}
        for m in self._FIELD.finditer(text):
            decl = m.group("decl").strip()
            name = re.search(r"(\w+)\s*(\[[^\]]*\])?$", decl).group(1)
            self.fields[name] = _Field(int(m.group(2)), int(m.group(3)), m.group(4) == "1",
                                       decl.startswith("__data_loc"), "[" in decl)
        self.printed = self._printed(text)

    def _printed(self, text: str) -> list[_Printed]:
        """What the print fmt prints, for each conversion whose text names it the
        way the text parser's fields are named ('label=%d', 'label %d')."""
        m = re.search(r'^print fmt: "((?:[^"\\]|\\.)*)"(.*)$', text, re.M)
        if m is None:
            return []
        fmt, args = m.group(1), _split_args(m.group(2))
        out, last = [], 0
        for i, conv in enumerate(self._CONV.finditer(fmt)):
            before, last = fmt[last:conv.start()], conv.end()
            label = re.search(r"(\w[\w-]*)[=: ]\s*(\S*)$", before)   # not "<- " of a kretprobe
            ref = re.search(r"(?:REC->|__get_str\()(\w+)", args[i]) if i < len(args) else None
            if label and ref and ref.group(1) in self.fields:
                choice = re.search(r'\?\s*"([^"]*)"\s*:\s*"([^"]*)"', args[i])   # x ? "a" : "b"
                out.append(_Printed(label.group(1), label.group(2), ref.group(1), conv.group(1),
                                    choice.groups() if choice else None))
        return out

    def decode(self, data: bytes | memoryview, start: int) -> dict[str, str]:
        """The fields of one event whose data begins at ``start``, as strings."""
        fields = {}
        for p in self.printed:
            f = self.fields[p.field]
            at = start + f.offset
            if f.data_loc:                              # u32: length << 16 | offset
                loc = int.from_bytes(data[at:at + 4], sys.byteorder)
                value = _c_string(data[start + (loc & 0xFFFF):start + (loc & 0xFFFF) + (loc >> 16)])
            elif f.array:                               # char comm[16]
                value = _c_string(data[at:at + f.size])
            else:
                n = int.from_bytes(data[at:at + f.size], sys.byteorder, signed=p.conv in "di")
                if p.choices:
                    value = p.choices[0] if n else p.choices[1]
                elif p.conv == "p":
                    value = f"{n:016x}"
                elif p.conv in "xX":
                    value = f"{n:x}"
                else:
                    value = str(n)
            fields[p.label] = p.prefix + value
        return fields


def _c_string(raw: bytes) -> str:
    return bytes(raw).split(b"\0")[0].decode(errors="replace")


def _split_args(text: str) -> list[str]:
    """The print fmt's arguments (after the format string), split at the commas
    outside parentheses: 'REC->a, __print_flags(REC->b, "|", ...)' is two."""
    args, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        current += ch
    args.append(current.strip())
    return [a for a in args if a]


def formats(instance: str) -> dict[int, Format]:
    """The formats of the events enabled in ``instance`` (its ``set_event``), by ID."""
    found = {}
    with open(f"{instance}/set_event") as f:
        for line in f:
            system, _, event = line.strip().partition(":")
            if event:
                with open(f"{instance}/events/{system}/{event}/format") as g:
                    fmt = Format(g.read())
                found[fmt.id] = fmt
    return found


def _page_header(tracefs_events: str) -> tuple[int, int]:
    """(offset, size) of the page header's commit word; the data follow it
    (events/header_page: u64 timestamp, local_t commit, char data[])."""
    with open(f"{tracefs_events}/header_page") as f:
        text = f.read()
    m = re.search(r"field: local_t commit;\s*offset:(\d+);\s*size:(\d+);", text)
    return int(m.group(1)), int(m.group(2))


def pages(path: str, size: int) -> Iterator[bytes]:
    """The pages of one CPU's ``trace_pipe_raw``, until it is empty (non-blocking);
    ``size`` is the sub-buffer's: a read(2) returns at most one."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                page = os.read(fd, size)
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    return
                raise
            if not page:
                return
            yield page
    finally:
        os.close(fd)


Item = tuple[float, int, str, "tuple[int, ...] | dict[str, str]"]
"""One decoded event, before any Event is made: (ts in seconds, pid, name, and
sys_enter's or sys_exit's numbers, or the other events' fields)."""


def read_items(instance: str) -> list[Item]:
    """Every event of the instance's per-CPU binary buffers as Items, in time
    order (consumed: a read(2) of trace_pipe_raw consumes the page it returns,
    kernel/trace/trace.c tracing_buffers_read -> ring_buffer_read_page). Trace
    reads these: 400k Event objects cost more than the records they end up in."""
    fmts = formats(instance)
    commit_at, commit_size = _page_header(f"{instance}/events")
    data_at = commit_at + commit_size
    commit_fmt = "=Q" if commit_size == 8 else "=I"
    try:                        # Linux 6.8 made the sub-buffer's size a setting; a page before
        with open(f"{instance}/buffer_subbuf_size_kb") as f:
            size = int(f.read()) * 1024
    except FileNotFoundError:
        size = os.sysconf("SC_PAGE_SIZE")
    found: list[Item] = []
    with no_gc():
        for cpu in sorted(os.listdir(f"{instance}/per_cpu")):
            for page in pages(f"{instance}/per_cpu/{cpu}/trace_pipe_raw", size):
                ts = struct.unpack_from("=Q", page, 0)[0]
                commit = struct.unpack_from(commit_fmt, page, commit_at)[0]
                _decode_items(page, data_at, data_at + (commit & ~RB_MISSED_FLAGS & 0xFFFFFFFF),
                              ts, fmts, found)
        found.sort(key=itemgetter(0))          # each CPU's run is in order: timsort merges the runs
    return found


def event(item: Item) -> Event:
    """The Event of one Item."""
    ts, pid, name, payload = item
    if isinstance(payload, dict):
        return Event(ts, pid, name, payload)
    return Event(ts, pid, name, None, payload)


def read_raw(instance: str) -> list[Event]:
    """Every event of the instance's per-CPU binary buffers, in time order (consumed)."""
    with no_gc():
        return [event(item) for item in read_items(instance)]


# The common fields every event starts with (events/*/format: common_type at 0,
# common_pid at 4), read with the 4-byte event header in front of them.
_HEAD = struct.Struct("=IHxxi")                 # header, common_type, common_pid
_HEAD_LONG = struct.Struct("=IIHxxi")           # ... after type_len 0's length word
_SYS_ENTER = struct.Struct("=q6Q")              # raw_syscalls:sys_enter: long id; unsigned long args[6]
_SYS_EXIT = struct.Struct("=qq")                # raw_syscalls:sys_exit: long id; long ret


def _decode_page(page: bytes, off: int, end: int, ts: int, fmts: dict[int, Format],
                 out: list[Event]) -> None:
    """Append the events of one page's data [off, end) to ``out`` (as _decode_items)."""
    items: list[Item] = []
    _decode_items(page, off, end, ts, fmts, items)
    out += map(event, items)


def _decode_items(page: bytes, off: int, end: int, ts: int, fmts: dict[int, Format],
                  out: list[Item]) -> None:
    """Append the events of one page's data [off, end) to ``out`` as Items; ``ts``
    is the page's time stamp (ns), each event adding its time_delta."""
    head, head_long = _HEAD.unpack_from, _HEAD_LONG.unpack_from
    enter_body, exit_body = _SYS_ENTER.unpack_from, _SYS_EXIT.unpack_from
    enter = next((i for i, f in fmts.items() if f.name == "sys_enter"), -1)
    exit_ = next((i for i, f in fmts.items() if f.name == "sys_exit"), -1)
    append = out.append
    page = page + bytes(16)         # head() reads past an 8-byte time extend ending the data
    while off < end:
        hdr, etype, pid = head(page, off)
        type_len = hdr & 31
        if type_len == 0:
            _, length, etype, pid = head_long(page, off)
            data, nxt = off + 8, off + 4 + length
        elif type_len <= 28:
            data, nxt = off + 4, off + 4 + 4 * type_len
        else:
            array0 = int.from_bytes(page[off + 4:off + 8], sys.byteorder)
            delta = hdr >> 5
            if type_len == PADDING:
                if delta == 0 and array0 == 0:
                    return                              # the rest of the page is empty
                off += 4 + array0                       # a discarded event: no time
            elif type_len == TIME_EXTEND:
                ts += delta + (array0 << TS_SHIFT)
                off += 8
            else:                                       # TIME_STAMP: absolute, low 59 bits
                ts = (ts & ~((1 << 59) - 1)) | delta | (array0 << TS_SHIFT)
                off += 8
            continue
        ts += hdr >> 5
        off = nxt
        if etype == exit_:
            append((ts / 1e9, pid, "sys_exit", exit_body(page, data + 8)))
        elif etype == enter:
            append((ts / 1e9, pid, "sys_enter", enter_body(page, data + 8)))
        elif etype in fmts:
            append((ts / 1e9, pid, fmts[etype].name, fmts[etype].decode(page, data)))
