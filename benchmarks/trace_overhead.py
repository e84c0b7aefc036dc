"""How much does `labkit trace` slow a container down? Measured against the
same container untraced and against `strace -f`, in one run.

The workload is syscall-heavy: dd copying BLOCKS one-byte blocks from
/dev/zero to /dev/null makes a read(2) and a write(2) per block (2 x BLOCKS
small syscalls). Each variant runs ROUNDS times, interleaved; the script prints
the median wall time of each, the ratios to untraced, and the events the trace
lost (target: within 1.5x of untraced, and none lost).

    .venv/bin/python benchmarks/trace_overhead.py [BLOCKS] [ROUNDS]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time

from labkit import pid, trace
from labkit.spawn import spawn

BLOCKS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
DD = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={BLOCKS}", "status=none"]


def untraced() -> tuple[float, int]:
    start = time.perf_counter()
    with spawn(DD, [pid.PidNamespace()]) as proc:
        assert proc.wait() == 0
    return time.perf_counter() - start, 0


def labkit_traced() -> tuple[float, int]:
    # 2 events a block, under 100 bytes each: size the per-CPU buffer for all of them.
    tr = trace.Trace(buffer_kb=max(16384, BLOCKS * 2 * 100 // 1024))
    start = time.perf_counter()
    with spawn(DD, [pid.PidNamespace(), tr]) as proc:
        assert proc.wait() == 0
        elapsed = time.perf_counter() - start      # the container's run; reading comes after
    syscalls = sum(1 for r in tr.records if r.syscall in ("read", "write"))
    assert syscalls >= 2 * BLOCKS or tr.lost, f"only {syscalls} read/write records"
    return elapsed, tr.lost


def straced() -> tuple[float, int]:
    start = time.perf_counter()
    with spawn(["strace", "-f", "-qq", "-o", "/dev/null", *DD], [pid.PidNamespace()]) as proc:
        assert proc.wait() == 0
    return time.perf_counter() - start, 0


def main() -> None:
    variants = {"untraced": untraced, "labkit trace": labkit_traced}
    if shutil.which("strace"):
        variants["strace -f"] = straced
    times: dict[str, list[float]] = {name: [] for name in variants}
    lost: list[int] = []
    for _ in range(ROUNDS):
        for name, run in variants.items():
            elapsed, n = run()
            times[name].append(elapsed)
            if name == "labkit trace":
                lost.append(n)
    base = statistics.median(times["untraced"])
    print(f"workload: dd of {BLOCKS} one-byte blocks = {2 * BLOCKS} read/write syscalls, "
          f"{ROUNDS} rounds, medians")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<14} {median * 1000:9.1f} ms   x{median / base:6.2f} of untraced")
    print(f"  lost events under labkit trace: {max(lost)} (worst round)")


if __name__ == "__main__":
    main()
