#!/usr/bin/env python3
"""How long does a full container take, start to exit, and what does an idle one cost?

Runs /bin/true N times each way, interleaved so machine noise hits every way
alike, and prints the medians side by side with the references measured in
the same run:

  labkit run     `labkit run -- /bin/true` with every default: all namespaces but
                 user, overlay on the busybox image, cgroup limits (memory, pids,
                 v1 device rules), Docker's 14 capabilities, no_new_privs, seccomp
  labkit API     Container().run(["/bin/true"]) from this warm Python process
  runc           `runc run` on an equivalent bundle: the same busybox image, the
                 same six namespaces, the same memory/pids limits (runc's default
                 spec: its masked paths, capabilities and device rules; no seccomp
                 filter and no overlay: runc gets neither by default)
  bwrap          `bwrap --unshare-all` on the same image (/proc, /dev): namespaces only

and the floor a Python command cannot go under, from the same interpreter:

  python -S      `python -S -c pass`: the interpreter alone, without site
  python         `python -c pass`: the interpreter with site (the venv's .pth files),
                 as the `labkit` command starts
  imports        `python -c "import ..."` of every module a `labkit run -- /bin/true`
                 imports (read from one run under `python -X importtime`): the
                 interpreter and the imports, no container (its exit finalizes
                 those modules, as labkit run's does: that is counted with them)

labkit run minus imports is labkit's own work: parsing the options, building the
container, compiling the seccomp filter, and the kernel's work (clone, mounts,
pivot_root, cgroups, execve, wait, release).

The bytecode cache is on: labkit's package is compiled with compileall first
(PYTHONDONTWRITEBYTECODE, when set, stops only the writing of .pyc files, not
their use), and every way runs once before the timed runs.

Targets (issue 17): `labkit run` within 1.5x of runc; (issue 8) the API within 2x of bwrap.
Then: containers per second (one after another, and a burst started at once),
and the memory cost of an idle container (N idle containers: the host's used
memory before and after, and their cgroups' own memory usage).

Usage: sudo .venv/bin/python benchmarks/container_startup.py [-n RUNS] [--idle N]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

from common import run_checked, runc_bundle, sample

import labkit
from labkit import cgroups, rootfs
from labkit.container import DEFAULT_LIMITS, Container


def labkit_api() -> None:
    assert Container().run(["/bin/true"]).returncode == 0


def run_imports(labkit_cmd: str) -> list[str]:
    """The modules one `labkit run -- /bin/true` imports at the top level (each
    line of `python -X importtime` that is not nested in another import)."""
    out = subprocess.run([sys.executable, "-X", "importtime", labkit_cmd, "run", "--", "/bin/true"],
                         check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr
    names = [line.split("|")[-1] for line in out.splitlines() if line.startswith("import time:")]
    return [n.strip() for n in names[1:] if not n.startswith("  ")]    # [0] is the header


def meminfo_used() -> int:
    """MemTotal - MemAvailable, in bytes (proc(5))."""
    fields = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            fields[key] = int(value.split()[0]) * 1024
    return fields["MemTotal"] - fields["MemAvailable"]


def idle_cost(count: int) -> tuple[float, float, float]:
    """Start ``count`` idle containers at once; return (seconds to start them all,
    host memory used per container, cgroup memory per container), in bytes."""
    boxes = [Container() for _ in range(count)]
    before = meminfo_used()
    start = time.perf_counter()
    try:
        for box in boxes:
            box.start(["sleep", "3600"])
        elapsed = time.perf_counter() - start
        time.sleep(1)                                 # let page tables and slabs settle
        after = meminfo_used()
        in_groups = sum(p.stats().get("memory_current", 0) for box in boxes for p in box.prims
                        if isinstance(p, cgroups.Cgroup))
    finally:
        for box in boxes:
            box.stop()
    return elapsed, (after - before) / count, in_groups / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=50, help="runs of each way (default 50)")
    parser.add_argument("--idle", type=int, default=50,
                        help="idle containers for the memory cost (default 50; 0: skip it)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("container_startup.py: needs root (namespaces, cgroups): run it with sudo", file=sys.stderr)
        return 1

    package = os.path.dirname(labkit.__file__)
    if not compileall.compile_dir(package, quiet=1):
        print(f"container_startup.py: compileall failed on {package}", file=sys.stderr)
        return 1
    image = rootfs.default_rootfs()
    labkit_cmd = os.path.join(os.path.dirname(sys.executable), "labkit")
    imports = run_imports(labkit_cmd)
    ways: dict[str, Callable[[], object]] = {
        "python -S": lambda: run_checked([sys.executable, "-S", "-c", "pass"]),
        "python": lambda: run_checked([sys.executable, "-c", "pass"]),
        "imports": lambda: run_checked([sys.executable, "-c", "import " + ", ".join(imports)]),
        "labkit run": lambda: run_checked([labkit_cmd, "run", "--", "/bin/true"]),
        "labkit API": labkit_api,
    }
    if shutil.which("bwrap"):
        ways["bwrap"] = lambda: run_checked(["bwrap", "--unshare-all", "--ro-bind", image, "/",
                                             "--proc", "/proc", "--dev", "/dev", "/bin/true"])
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        runc = runc_bundle(tmp, image, ("pid", "ipc", "uts", "mount", "network", "cgroup"),
                           {"memory": {"limit": 512 << 20}, "pids": {"limit": DEFAULT_LIMITS["pids"]}})
        if runc:
            counter = iter(range(10**6))
            ways["runc"] = lambda: run_checked(runc + [f"labkit-bench-{os.getpid()}-{next(counter)}"])
        samples = sample(ways, args.runs)

    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"full container start-to-exit of /bin/true, {args.runs} runs each, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}, bytecode cache on (compileall, a warm-up run each)")
    ref_name = "runc" if "runc" in medians else "labkit API"
    print(f"{'way':<12} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8} {'x ' + ref_name:>14}")
    for name, values in samples.items():
        q = statistics.quantiles(values, n=10)
        ratio = medians[name] / medians[ref_name]
        print(f"{name:<12} {medians[name]:>10.2f} {q[0]:>8.2f} {q[-1]:>8.2f} {ratio:>14.2f}")
    cli, api = medians["labkit run"], medians["labkit API"]
    print(f"labkit run's {len(imports)} top-level imports: {', '.join(imports)}")
    interpreter, loaded = medians["python"], medians["imports"]
    print(f"of labkit run's {cli:.1f} ms: interpreter {interpreter:.1f} ms ({interpreter / cli:.0%}), "
          f"imports (and their finalization at exit) {loaded - interpreter:.1f} ms "
          f"({(loaded - interpreter) / cli:.0%}), labkit's own work "
          f"and the kernel's {cli - loaded:.1f} ms ({(cli - loaded) / cli:.0%})")
    if "runc" in medians:
        ratio = cli / medians["runc"]
        print(f"target: labkit run within 1.5x of runc: {ratio:.2f}x runc -> {'met' if ratio <= 1.5 else 'NOT met'}")
        floor = interpreter / medians["runc"]
        print(f"(the interpreter alone is {floor:.2f}x runc; interpreter and imports {loaded / medians['runc']:.2f}x)")
    if "bwrap" in medians:
        ratio = api / medians["bwrap"]
        print(f"target: labkit API within 2x of bwrap: {ratio:.2f}x -> {'met' if ratio <= 2 else 'NOT met'}")
    print(f"containers per second, one after another: API {1000 / api:.1f}, labkit run {1000 / cli:.1f}")
    if args.idle <= 0:
        return 0

    elapsed, host_bytes, group_bytes = idle_cost(args.idle)
    print(f"burst: {args.idle} idle containers started in {elapsed:.2f} s: {args.idle / elapsed:.1f} per second")
    print(f"memory per idle container (busybox sleep): host used {host_bytes / 1024:.0f} KiB, "
          f"its cgroup's memory usage {group_bytes / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
