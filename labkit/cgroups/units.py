"""Sizes and rates as people write them, turned into the numbers the kernel takes.

Sizes (``--memory``): ``512k``, ``64M``, ``1.5G`` or plain bytes. The suffixes
are powers of 1024, as in memory.limit_in_bytes / memory.max (the kernel's own
memparse() reads ``64M`` the same way, see Documentation/admin-guide/cgroup-v2.rst).

Rates (``--io-write-bps``, ``--bandwidth``): bytes per second written with a
size and ``/s`` (``10MB/s``, ``512k/s``: powers of 1024, as Docker's
--device-write-bps), or bits per second as tc(8) writes them (``1mbit``,
``500kbit``: powers of 1000, "mbit = megabits per second"), or plain bytes/s.
"""

from __future__ import annotations

import os
import re

from ..errors import UsageError

SIZE_UNITS: dict[str, int] = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
BIT_UNITS: dict[str, int] = {"bit": 1, "kbit": 1000, "mbit": 1000 ** 2, "gbit": 1000 ** 3}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_BITS = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?bit)", re.IGNORECASE)


def _positive(value: float, text: str, what: str, example: str) -> int:
    if value < 1:
        raise UsageError(f"{what} {text!r} is zero", f"give a positive {what}, e.g. {example}")
    return int(value)


def _sign_check(text: str, what: str, example: str) -> str:
    text = text.strip()
    if text.startswith("-"):
        raise UsageError(f"{what} {text!r} is negative", f"give a positive {what}, e.g. {example}")
    return text


def parse_size(text: str | int, what: str = "size") -> int:
    """``64M`` -> 67108864 bytes. Raises UsageError when malformed, zero or negative."""
    if isinstance(text, int):
        text = str(text)
    text = _sign_check(text, what, "64M")
    m = _SIZE.fullmatch(text)
    if not m:
        raise UsageError(f"malformed {what} {text!r}", "write bytes or a number with k, M, G, e.g. 512k, 64M, 1.5G")
    return _positive(float(m[1]) * SIZE_UNITS[m[2].lower()], text, what, "64M")


def parse_rate(text: str | int, what: str = "rate") -> int:
    """A rate in bytes per second: ``10MB/s`` -> 10485760, ``1mbit`` -> 125000."""
    if isinstance(text, int):
        text = str(text)
    text = _sign_check(text, what, "2MB/s")
    bits = _BITS.fullmatch(text)
    if bits:
        return _positive(float(bits[1]) * BIT_UNITS[bits[2].lower()] / 8, text, what, "1mbit")
    size = _SIZE.fullmatch(text[:-2] if text.lower().endswith("/s") else text)
    if not size:
        raise UsageError(f"malformed {what} {text!r}",
                         "write bytes per second (2MB/s, 512k/s) or bits per second (1mbit, 500kbit)")
    return _positive(float(size[1]) * SIZE_UNITS[size[2].lower()], text, what, "2MB/s")


def parse_count(text: str | int, what: str = "count") -> int:
    """A positive whole number (``--pids 32``)."""
    text = _sign_check(str(text), what, "32")
    if not text.isdigit():
        raise UsageError(f"malformed {what} {text!r}", "give a whole number, e.g. 32")
    return _positive(int(text), text, what, "32")


def parse_cpus(text: str | float, what: str = "--cpus") -> float:
    """A number of CPUs, 0.01 up to the host's cores (os.cpu_count())."""
    text = _sign_check(str(text), what, "0.5")
    try:
        cpus = float(text)
    except ValueError:
        raise UsageError(f"malformed {what} {text!r}", "give a number of CPUs, e.g. 0.5 or 1.5") from None
    cores = os.cpu_count() or 1
    if not 0.01 <= cpus <= cores:
        raise UsageError(f"{what} {text} is outside 0.01..{cores}",
                         f"this host has {cores} cores: give a number of CPUs from 0.01 to {cores}")
    return cpus
