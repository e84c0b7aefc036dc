"""How much does tracing slow a container down, and where does the cost come from?

One run, rounds interleaved (every variant once a round, after a warm-up
round), medians side by side:

- the container untraced;
- each group of labkit's events alone, raw: a private tracefs instance
  following the container with set_event_pid and the option event-fork
  (Documentation/trace/events.rst, "Event PID filtering"), nothing read
  back: what the kernel's tracepoints cost by themselves;
- all of labkit's events raw in one instance: the floor `labkit trace` adds to;
- `labkit trace`: the Trace primitive (the container's run; reading comes after);
- `labkit trace --syscalls sethostname`, a call the workload never makes: with
  kprobes, whether the other calls keep the kernel's fast path; without, the
  tracepoints' id filter, which cannot avoid it;
- `strace -f`, for reference;
- the whole CLI, wall time with reading and printing: `python -m labkit trace`
  against `python -m labkit run` (output to /dev/null).

Workloads: dd copying BLOCKS one-byte blocks from /dev/zero to /dev/null
(a read(2) and a write(2) a block: 2 x BLOCKS small syscalls), and two
realistic ones: untarring /usr/share/doc into a tmpfs, and 300 HTTP requests
over loopback from a Python client to a Python server in the same container.

Then what the CLI spends after the container exits, stage by stage, on the dd
workload's buffer: the kernel's text (``trace``) parsed into Events against the
binary pages (``trace_pipe_raw``) of the same buffer decoded into Items (what
Trace reads), Trace._records() with and without Python's cyclic GC, and
format_timeline(). Lost events are the
per-CPU ``overrun`` and ``dropped events`` of each instance (must be 0).

    .venv/bin/python benchmarks/trace_overhead.py [BLOCKS] [ROUNDS]

With TRACE_BASELINE=/path/to/another/checkout, the CLI's `labkit trace` also
runs from that checkout (before/after a change, in the same run).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

from labkit import pid, trace, tracebuf
from labkit.spawn import Primitive, spawn

BLOCKS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
DD = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={BLOCKS}", "status=none"]
# sys_enter is 68 bytes in the ring buffer, sys_exit 28 (events/raw_syscalls/*/format
# plus the 4-byte event header): 128 a syscall leaves room for page headers.
BUFFER_KB = max(16384, BLOCKS * 2 * 128 // 1024)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.environ.get("TRACE_BASELINE")

GROUPS: dict[str, tuple[str, ...]] = {
    "sys_enter+exit": ("raw_syscalls/sys_enter", "raw_syscalls/sys_exit"),
    "sys_exit alone": ("raw_syscalls/sys_exit",),
    "cap_capable": ("capability/cap_capable",),
    "sched+signal": tuple(e for e in trace.EVENTS if e.startswith(("sched/", "signal/"))),
    "cgroup": ("cgroup",),
}
FLOOR = "all raw (floor)"


class RawEvents(Primitive):
    """A tracefs instance with ``events`` on, following the container as Trace
    does (set_event_pid + event-fork, same buffer, overwrite off), never read:
    the kernel's cost alone."""

    name = "raw-events"
    flags = 0

    def __init__(self, events: tuple[str, ...], buffer_kb: int, quiet_off: bool = False,
                 keep: bool = False) -> None:
        self.events, self.buffer_kb, self.quiet_off = events, buffer_kb, quiet_off
        self.keep = keep                        # leave the instance for remove() (to read it)
        self.dir, self.lost, self.setup = "", 0, 0.0

    def prepare(self) -> None:
        start = time.perf_counter()
        directory = f"{trace.instances()}/labkit-bench-{os.getpid()}"
        os.mkdir(directory)
        self.dir = directory
        for path, value in (("tracing_on", "0"), ("buffer_size_kb", str(self.buffer_kb)),
                            ("options/overwrite", "0"), ("options/event-fork", "1")):
            trace._write(f"{self.dir}/{path}", value)
        if self.quiet_off:                      # labkit before: cgroup:* on, then QUIET off
            for event in self.events:
                if os.path.exists(f"{self.dir}/events/{event}/enable"):
                    trace._write(f"{self.dir}/events/{event}/enable", "1")
            for event in trace.QUIET:
                trace._write(f"{self.dir}/events/{event}/enable", "0")
        else:                                   # as Trace does: each event on, once
            for event in trace.single_events(f"{self.dir}/events"):
                if event in self.events or event.split("/")[0] in self.events:
                    trace._write(f"{self.dir}/events/{event}/enable", "1")
        self.setup = time.perf_counter() - start

    def join(self, pid: int) -> None:
        trace._write(f"{self.dir}/set_event_pid", str(pid))
        trace._write(f"{self.dir}/tracing_on", "1")

    def release(self) -> None:
        if self.dir:
            trace._write(f"{self.dir}/tracing_on", "0")
            self.lost = lost_events(self.dir)
            if not self.keep:
                self.remove()

    def remove(self) -> None:
        if self.dir:
            os.rmdir(self.dir)
            self.dir = ""


class TimedTrace(trace.Trace):
    """labkit's Trace, its prepare() timed (instance, buffer, events; calibration once)."""

    setup = 0.0

    def prepare(self) -> None:
        start = time.perf_counter()
        super().prepare()
        self.setup = time.perf_counter() - start


def lost_events(instance: str) -> int:
    """overrun + dropped events over the instance's per-CPU stats."""
    lost = 0
    for cpu in os.listdir(f"{instance}/per_cpu"):
        for line in trace._read(f"{instance}/per_cpu/{cpu}/stats").splitlines():
            key, _, value = line.partition(": ")
            lost += int(value) if key in ("overrun", "dropped events") else 0
    return lost


Sample = tuple[float, int, float]           # seconds spawn to exit, lost events, setup seconds


def container(argv: list[str], extra: Primitive | None = None) -> Sample:
    """Seconds from spawn to exit of ``argv`` in a PID namespace (``extra``'s
    prepare() included), ``extra``'s lost events and the seconds its prepare() took."""
    start = time.perf_counter()
    with spawn(argv, [pid.PidNamespace()] + ([extra] if extra else [])) as proc:
        assert proc.wait() == 0, argv
        elapsed = time.perf_counter() - start      # a Trace reads its buffer after this
    return elapsed, getattr(extra, "lost", 0), getattr(extra, "setup", 0.0)


def cli(verb: str, argv: list[str], repo: str = REPO) -> Sample:
    """Wall time of `python -m labkit VERB -- argv` from ``repo``, output to /dev/null."""
    extra = ["--buffer-kb", str(BUFFER_KB)] if verb == "trace" else []
    env = {**os.environ, "PYTHONPATH": repo}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "labkit", verb, *extra, "--", *argv], env=env, cwd=repo,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, 0, 0.0


HTTP = [sys.executable, "-c", """
import http.client, http.server, threading
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
server.RequestHandlerClass.log_message = lambda *a: None
threading.Thread(target=server.serve_forever, daemon=True).start()
for _ in range(300):
    c = http.client.HTTPConnection("127.0.0.1", server.server_port)
    c.request("GET", "/")
    assert c.getresponse().read()
    c.close()
"""]


def workload_variants(argv: list[str], full: bool) -> dict[str, Callable[[], Sample]]:
    ways: dict[str, Callable[[], Sample]] = {"untraced": lambda: container(argv)}
    if full:
        for name, events in GROUPS.items():
            ways[name] = lambda events=events: container(argv, RawEvents(events, BUFFER_KB))
    ways[FLOOR] = lambda: container(argv, RawEvents(trace.EVENTS, BUFFER_KB))
    if full:
        ways["floor, QUIET off"] = lambda: container(argv, RawEvents(trace.EVENTS, BUFFER_KB, True))
    ways["labkit trace"] = lambda: container(argv, TimedTrace(buffer_kb=BUFFER_KB))
    # --syscalls: one call the workload never makes. Through kprobes (where the
    # kernel has them) the workload's calls should keep the fast path; through
    # the tracepoints' id filter (elsewhere) they cannot.
    ways["trace --syscalls"] = lambda: container(argv, TimedTrace(buffer_kb=BUFFER_KB,
                                                                  syscalls=("sethostname",)))
    if shutil.which("strace"):
        ways["strace -f"] = lambda: container(["strace", "-f", "-qq", "-o", "/dev/null", *argv])
    if full:
        ways["CLI labkit run"] = lambda: cli("run", argv)
        ways["CLI labkit trace"] = lambda: cli("trace", argv)
        if BASELINE:
            ways["CLI trace, baseline"] = lambda: cli("trace", argv, BASELINE)
    return ways


def measure(ways: dict[str, Callable[[], Sample]], after: Callable[[], None]
            ) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {name: [] for name in ways}
    for round_ in range(ROUNDS + 1):                # round 0 warms up, not counted
        for name, run in ways.items():
            sample = run()
            after()
            if round_:
                samples[name].append(sample)
    return samples


def report(title: str, samples: dict[str, list[Sample]]) -> None:
    med = {name: statistics.median(s[0] for s in v) for name, v in samples.items()}
    print(title)
    print(f"  {'variant':<18} {'median':>10} {'x untraced':>11} {'x floor':>8} {'lost':>6} "
          f"{'setup':>9}  {'run-setup x untraced':>20}")
    for name, m in med.items():
        lost = max(s[1] for s in samples[name])
        setup = statistics.median(s[2] for s in samples[name])
        floor = f"{m / med[FLOOR]:8.2f}" if not name.startswith("CLI") else f"{'':8}"
        bare = f"{(m - setup) / med['untraced']:20.2f}" if setup else ""
        print(f"  {name:<18} {m * 1000:7.1f} ms {m / med['untraced']:11.2f} {floor} {lost:>6} "
              f"{setup * 1000:6.1f} ms  {bare}")
    if "CLI labkit trace" in med:
        print(f"  CLI trace / CLI run: {med['CLI labkit trace'] / med['CLI labkit run']:.2f}x "
              f"(target <= 5x); labkit trace / floor: {med['labkit trace'] / med[FLOOR]:.2f}x "
              f"(target <= 1.25x)")


def timed(fn: Callable[[], object], gc: bool = False) -> tuple[float, object]:
    start = time.perf_counter()
    if gc:
        result = fn()
    else:
        with tracebuf.no_gc():
            result = fn()
    return time.perf_counter() - start, result


def stages() -> dict[str, float]:
    """Seconds of each reading stage for one traced dd run."""
    raw = RawEvents(trace.EVENTS, BUFFER_KB, keep=True)
    try:
        container(DD, raw)
        found = {"text parse": timed(lambda: tracebuf.read_text(raw.dir), gc=True)[0]}
        found["binary pages"], items = timed(lambda: tracebuf.read_items(raw.dir))
    finally:
        raw.remove()
    tr = trace.Trace(buffer_kb=BUFFER_KB)              # for what _records() needs to know
    container(DD, tr)
    found["_records, GC on"] = timed(lambda: tr._records(items), gc=True)[0]
    found["_records, GC off"], tr.records = timed(lambda: tr._records(items))
    found["format_timeline"] = timed(lambda: trace.format_timeline(tr))[0]
    found["events"] = len(items)
    return found


def main() -> None:
    print(f"host: {os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"qemu running: {bool(subprocess.run(['pgrep', '-f', 'qemu-system'], capture_output=True).stdout)}")
    print(f"buffer {BUFFER_KB} KB a CPU for every instance; {ROUNDS} rounds after a warm-up, medians")
    kprobes = os.path.exists(f"{trace.tracefs()}/kprobe_events")
    print(f"trace --syscalls through: {'kprobes' if kprobes else 'the id filter (this kernel has no kprobes)'}")
    if BASELINE:
        head = subprocess.run(["git", "-C", BASELINE, "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True).stdout.strip()
        print(f"baseline: {BASELINE} at {head[:70]}")
    print()
    samples = measure(workload_variants(DD, full=True), lambda: None)
    report(f"dd of {BLOCKS} one-byte blocks = {2 * BLOCKS} read/write syscalls", samples)

    scratch = tempfile.mkdtemp(prefix="labkit-bench-", dir="/dev/shm")     # a tmpfs
    try:
        tarball = f"{scratch}/doc.tar"
        subprocess.run(["tar", "-cf", tarball, "-C", "/usr/share", "doc"], check=True)
        out = f"{scratch}/out"
        os.mkdir(out)
        untar = ["tar", "-xf", tarball, "-C", out]
        samples = measure(workload_variants(untar, full=False),
                          lambda: (shutil.rmtree(out), os.mkdir(out)))
        size = os.path.getsize(tarball) >> 20
        print()
        report(f"untar /usr/share/doc ({size} MB) into a tmpfs", samples)
    finally:
        shutil.rmtree(scratch)
    print()
    report("300 HTTP GETs over loopback, Python client and server in the container",
           measure(workload_variants(HTTP, full=False), lambda: None))

    runs = [stages() for _ in range(ROUNDS)]
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(f"\nreading the dd trace ({med.pop('events'):.0f} events), medians of {ROUNDS}:")
    for key, value in med.items():
        print(f"  {key:<18} {value * 1000:7.0f} ms")
    print(f"  binary / text: {med['text parse'] / med['binary pages']:.1f}x faster")


if __name__ == "__main__":
    main()
