#!/usr/bin/env python3
"""How long does a container take, start to exit? Measured, not claimed.

Runs /bin/true in new pid, uts, ipc and mount namespaces (with its own /proc),
N times each way, interleaved so machine noise hits every way alike, and prints
the medians side by side with the reference measured in the same run:

  unshare(1)     unshare -fpmui --mount-proc /bin/true (util-linux, C)
  labkit API     labkit.spawn.run(...) from this warm Python process
  labkit run     the `labkit run -- /bin/true` command (a fresh Python each time)
  runc           runc run on an equivalent bundle (pid, ipc, uts, mount), if installed

Targets (issue 2): API within 2x of unshare(1); `labkit run` under 60 ms.
Usage: sudo .venv/bin/python benchmarks/startup.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Callable

from common import run_checked, runc_bundle, sample

from labkit import ipc, pid, rootfs, spawn, uts


def labkit_api() -> None:
    result = spawn.run(["/bin/true"], [pid.PidNamespace(), uts.UtsNamespace(), ipc.IpcNamespace()])
    assert result.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=50, help="runs of each way (default 50)")
    runs = parser.parse_args().runs
    if os.geteuid() != 0:
        print("startup.py: needs root (namespaces): run it with sudo", file=sys.stderr)
        return 1

    labkit_cmd = os.path.join(os.path.dirname(sys.executable), "labkit")
    ways: dict[str, Callable[[], object]] = {
        "unshare(1)": lambda: run_checked(["unshare", "-fpmui", "--mount-proc", "/bin/true"]),
        "labkit API": labkit_api,
        # the same namespaces as unshare(1) above (the PID namespace brings its own
        # mount namespace and /proc), none of the full container's extras
        "labkit run": lambda: run_checked([labkit_cmd, "run", "--ns", "pid,uts,ipc", "--memory", "max",
                                           "--pids", "max", "--security-opt", "seccomp=unconfined",
                                           "--", "/bin/true"]),
        # every default of a full container (overlay rootfs, net, cgroups, seccomp)
        "run, full": lambda: run_checked([labkit_cmd, "run", "--", "/bin/true"]),
    }
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        runc = runc_bundle(tmp, rootfs.default_rootfs(), ("pid", "ipc", "uts", "mount"))
        if runc:
            counter = iter(range(10**6))
            ways["runc"] = lambda: run_checked(runc + [f"labkit-bench-{os.getpid()}-{next(counter)}"])
        samples = sample(ways, runs)

    ref = statistics.median(samples["unshare(1)"])
    print(f"container start-to-exit of /bin/true, pid+uts+ipc+mount namespaces, {runs} runs each, "
          f"{os.cpu_count()} CPUs")
    print(f"{'way':<12} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8} {'x unshare(1)':>13}")
    for name, values in samples.items():
        q = statistics.quantiles(values, n=10)
        med = statistics.median(values)
        print(f"{name:<12} {med:>10.2f} {q[0]:>8.2f} {q[-1]:>8.2f} {med / ref:>13.2f}")
    api = statistics.median(samples["labkit API"])
    cli = statistics.median(samples["labkit run"])
    print(f"target: labkit API within 2x of unshare(1): {api / ref:.2f}x -> "
          f"{'met' if api / ref <= 2 else 'NOT met'}")
    print(f"target: labkit run under 60 ms: {cli:.1f} ms -> {'met' if cli < 60 else 'NOT met'}")
    if sys.flags.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("note: PYTHONDONTWRITEBYTECODE is set: every `labkit run` compiles labkit from source")
    if "runc" in samples:
        print(f"labkit run vs runc: {cli / statistics.median(samples['runc']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
