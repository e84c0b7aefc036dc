"""Usage against the limit, over time: samples of a cgroup's counters, and their plots.

The numbers are the kernel's own: ``Cgroup.stats()`` reads cpuacct.usage /
cpu.stat (CPU time), memory.usage_in_bytes / memory.current, pids.current and
the I/O bytes of the limited device, sampled every ``interval`` seconds while
the container runs.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from ..cgroups import Cgroup


class Series(NamedTuple):
    """Counter values at times (seconds from the first sample)."""

    times: list[float]
    values: dict[str, list[int]]


def sample(cg: Cgroup, seconds: float, interval: float = 0.1,
           until: Callable[[], bool] = lambda: False) -> Series:
    """Read ``cg.stats()`` every ``interval`` s for ``seconds`` s (or until ``until()``)."""
    times: list[float] = []
    values: dict[str, list[int]] = {}
    start = time.monotonic()
    while True:
        now = time.monotonic() - start
        stats = cg.stats()
        times.append(now)
        for key, value in stats.items():
            values.setdefault(key, []).append(value)
        if now >= seconds or until():
            return Series(times, values)
        time.sleep(interval)


def rate(series: Series, key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """Per-second increase of a counter between samples (e.g. CPU usage -> CPUs used)."""
    t, v = series.times, series.values[key]
    mids = [(t[i] + t[i + 1]) / 2 for i in range(len(t) - 1)]
    rates = [(v[i + 1] - v[i]) / (t[i + 1] - t[i]) * scale for i in range(len(t) - 1)]
    return mids, rates


def plot_cpu(runs: dict[str, Series], limit: float | None, ax: Axes | None = None) -> Axes:
    """CPUs used over time for each run, with the quota as a dashed line."""
    ax = ax or plt.subplots(figsize=(8, 3.2))[1]
    for label, series in runs.items():
        ax.plot(*rate(series, "cpu_usage_usec", 1e-6), label=label)
    if limit is not None:
        ax.axhline(limit, color="red", linestyle="--", label=f"limit: {limit} CPU")
    ax.set(xlabel="time (s)", ylabel="CPUs used", ylim=(0, 1.2), title="CPU time, as the cgroup counts it")
    ax.legend(loc="upper right")
    return ax


def plot_counter(series: Series, key: str, limit: int | None, label: str, unit: float,
                 unit_name: str, ax: Axes | None = None) -> Axes:
    """A counter (memory bytes, pids, bytes written) over time against its limit."""
    ax = ax or plt.subplots(figsize=(8, 3.2))[1]
    ax.plot(series.times, [v / unit for v in series.values[key]], marker=".", label=label)
    if limit is not None:
        ax.axhline(limit / unit, color="red", linestyle="--", label=f"limit: {limit / unit:g} {unit_name}")
    ax.set(xlabel="time (s)", ylabel=unit_name)
    ax.legend(loc="upper left")
    return ax
