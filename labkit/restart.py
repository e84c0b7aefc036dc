"""``--restart``: start the container again when its command fails (Docker's policy words).

``no`` (the default) never restarts. ``on-failure[:N]`` restarts after a
non-zero exit status, at most N times (without N: until it succeeds). An
OOM-killed command exits 137 (128 + SIGKILL), a failure, so
``--memory 32M --restart on-failure:3`` is "killed and restarted" three times,
each time in a fresh cgroup.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import UsageError


class RestartPolicy(NamedTuple):
    on_failure: bool
    max_restarts: int | None     # None: no limit

    def should_restart(self, status: int, restarts: int) -> bool:
        """After exit ``status``, with ``restarts`` already done: start again?"""
        if not self.on_failure or status == 0:
            return False
        return self.max_restarts is None or restarts < self.max_restarts

    def describe(self, restarts: int) -> str:
        """"restart 2 of 3" (or "restart 2")."""
        limit = f" of {self.max_restarts}" if self.max_restarts is not None else ""
        return f"restart {restarts}{limit}"


def parse_restart(text: str | None) -> RestartPolicy:
    """``no`` | ``on-failure`` | ``on-failure:N`` (N a whole number, 1 or more)."""
    if text is None or text == "no":
        return RestartPolicy(False, 0)
    name, _, count = text.partition(":")
    if name != "on-failure":
        raise UsageError(f"unknown --restart policy {text!r}", "use no, on-failure or on-failure:N")
    if not count:
        return RestartPolicy(True, None)
    if not count.isdigit() or int(count) < 1:
        raise UsageError(f"bad restart count {count!r} in --restart {text}",
                         "give a whole number of restarts, 1 or more, e.g. on-failure:3")
    return RestartPolicy(True, int(count))
