"""labkit: build a Linux container from kernel primitives, one at a time.

Each module is one primitive (pid, uts, ipc, ...); ``spawn`` is the one launch
pipeline that composes them. Read ``spawn.py`` first.
"""

__version__ = "0.1.0"
