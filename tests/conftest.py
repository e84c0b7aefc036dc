"""Fixtures shared by the tests; the session-level check that the host is left as found."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from hoststate import leaks, snapshot  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def settled_leaks(before: dict, tries: int = 50) -> dict:
    """Leaks after giving the kernel a moment: namespaces of just-reaped processes
    and lazily detached mounts take a little while to go."""
    found = leaks(before, snapshot())
    for _ in range(tries):
        if not found:
            break
        time.sleep(0.1)
        found = leaks(before, snapshot())
    return found


@pytest.fixture(scope="session", autouse=True)
def host_left_as_found():
    """After the whole suite: no labkit namespace, mount, cgroup, link, tracefs
    instance or process may remain that was not there before."""
    if os.geteuid() != 0:
        pytest.exit("the labkit tests exercise the real kernel and need root", returncode=1)
    before = snapshot()
    yield
    found = settled_leaks(before)
    assert not found, f"the test session left kernel objects behind: {found}"


@pytest.fixture
def no_leaks():
    """Use in a test to check that this test alone left nothing behind."""
    before = snapshot()
    yield
    found = settled_leaks(before)
    assert not found, f"this test left kernel objects behind: {found}"


def labkit_cli(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real `labkit` command (python -m labkit) and capture its output."""
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True,
                          input=input, timeout=timeout, cwd=REPO)
