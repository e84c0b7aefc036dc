"""The end-to-end test's measurements, printed after pytest's summary (captured output or not)."""

from __future__ import annotations

from labvm_session import TIMINGS


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.section("labkit e2e timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.1f} s  {name}")
