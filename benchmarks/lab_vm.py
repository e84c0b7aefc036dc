"""The lab VM under qemu, measured in one run: image build, boot to first test,
and the same tests on this host and in the VM (the emulation's slowdown).

    python3 benchmarks/lab_vm.py [--release trixie|bookworm] [--rounds N] [--fresh] [TESTS...]

Run as root from the repository, with nothing else loading the machine (other VMs
share its CPUs). Steps, in this order:

1. build: `labvm.py build --force` (with --fresh, the debootstrap base is made
   again too, as on a new machine); the seconds it took.
2. boot to first test: from qemu's start to the first line the VM's job prints
   (timed on this host, as labvm.py relays it), for a job that only prints.
3. the same pytest selection (default: a kernel-heavy set of test files), N rounds,
   on this host and in the VM, interleaved; medians and the ratio VM / host. The
   VM's figure includes its boot; its pytest-only time (as pytest reports it) is
   printed beside it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABVM = [sys.executable, os.path.join(REPO, "scripts", "labvm.py")]
VENV_PYTHON = os.path.join(os.environ.get("LABKIT_VENV", os.path.join(REPO, ".venv")), "bin", "python")
DEFAULT_TESTS = ("tests/test_cgroups_kernel.py", "tests/test_trace.py", "tests/test_container.py",
                 "tests/test_cleanup.py")
PYTEST_TIME = re.compile(r" in ([0-9.]+)s")


def first_line_after(argv: list[str]) -> tuple[float, float]:
    """(seconds until argv printed its first line, seconds until it exited)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    first = time.monotonic() - started
    proc.stdout.read()
    if proc.wait() != 0:
        sys.exit(f"{' '.join(argv)} failed with {proc.returncode}")
    return first, time.monotonic() - started


def pytest_run(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, pytest's own seconds) of a passing pytest run."""
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - started
    if out.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{out.stdout[-3000:]}{out.stderr[-2000:]}")
    found = PYTEST_TIME.findall(out.stdout)
    return wall, float(found[-1]) if found else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default="trixie", choices=("trixie", "bookworm"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="debootstrap again too (a new machine)")
    parser.add_argument("tests", nargs="*", default=list(DEFAULT_TESTS))
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run it as root (debootstrap, qemu, and the tests' kernel objects)")

    if opts.fresh:
        cache = os.environ.get("LABKIT_VM_CACHE", "/var/cache/labkit/vm")
        shutil.rmtree(os.path.join(cache, opts.release), ignore_errors=True)
    started = time.monotonic()
    subprocess.run(LABVM + ["build", "--release", opts.release, "--force"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    build = time.monotonic() - started

    boot, whole = first_line_after(LABVM + ["run", "--release", opts.release, "--", "echo", "ready"])

    pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider", *opts.tests]
    host: list[tuple[float, float]] = []
    vm: list[tuple[float, float]] = []
    for _ in range(opts.rounds):
        host.append(pytest_run([VENV_PYTHON, *pytest]))
        vm.append(pytest_run(LABVM + ["run", "--release", opts.release, "--",
                                      "/opt/labkit/venv/bin/python", *pytest]))
    host_wall = statistics.median(w for w, _ in host)
    vm_wall = statistics.median(w for w, _ in vm)
    host_py = statistics.median(p for _, p in host)
    vm_py = statistics.median(p for _, p in vm)

    print(f"lab VM {opts.release} under qemu ({'KVM' if os.environ.get('LABKIT_VM_ACCEL') == 'kvm' else 'TCG'}), "
          f"{os.cpu_count()} host CPUs, {opts.rounds} round(s)")
    print(f"  image build{' (with debootstrap)' if opts.fresh else ''}: {build:.0f} s")
    print(f"  boot to the job's first line: {boot:.1f} s (the whole `echo` job: {whole:.1f} s)")
    print(f"  tests: {' '.join(opts.tests)}")
    print(f"  {'':<24}{'wall s':>10}{'pytest s':>10}")
    print(f"  {'host':<24}{host_wall:>10.1f}{host_py:>10.1f}")
    print(f"  {'VM (boot included)':<24}{vm_wall:>10.1f}{vm_py:>10.1f}")
    print(f"  slowdown VM / host: {vm_wall / host_wall:.1f}x wall, {vm_py / host_py:.1f}x pytest")


if __name__ == "__main__":
    main()
