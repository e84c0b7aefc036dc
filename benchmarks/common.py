"""What the benchmark scripts share: timing a call, running a command, a runc bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Callable


def timed(fn: Callable[[], object]) -> float:
    """Milliseconds that ``fn()`` took."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def sample(ways: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Time each way ``runs`` times, in turns (after one warm-up call each), so
    the machine's noise falls on every way alike; milliseconds per way."""
    for fn in ways.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(runs):
        for name, fn in ways.items():
            samples[name].append(timed(fn))
    return samples


def run_checked(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def runc_bundle(tmp: str, image: str, namespaces: tuple[str, ...],
                resources: dict | None = None) -> list[str] | None:
    """An OCI bundle in ``tmp`` whose root is ``image`` (read-only) and whose
    process is /bin/true, for `runc run`; return the command, None without runc."""
    runc = shutil.which("runc")
    if not runc:
        return None
    subprocess.run([runc, "spec"], cwd=tmp, check=True)
    with open(os.path.join(tmp, "config.json")) as f:
        config = json.load(f)
    config["root"] = {"path": image, "readonly": True}
    config["process"]["args"] = ["/bin/true"]
    config["process"]["terminal"] = False
    config["linux"]["namespaces"] = [{"type": t} for t in namespaces]
    config["linux"]["resources"].update(resources or {})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f)
    return [runc, "--root", os.path.join(tmp, "state"), "run", "--bundle", tmp]
