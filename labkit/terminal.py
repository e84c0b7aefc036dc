"""A terminal for the container (``labkit run -it``): a pseudoterminal pair.

pty(7): openpty(3) gives a master and a slave side; what is written to the
master is read from the slave as if typed, and the other way round. The
container's process gets the slave as stdin, stdout and stderr, and makes it
its *controlling terminal* (credentials(7), ioctl_tty(2)): it starts a new
session with setsid(2), then TIOCSCTTY. Then ^C typed on the master makes the
kernel's line discipline send SIGINT to the container's foreground process
group, as on any terminal. The parent puts the user's own terminal in raw
mode (termios(3): no echo, no line editing, no signals: each key goes to the
container as is), relays bytes both ways, and restores the terminal on every
path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import termios
import tty
from typing import Callable

from . import kernel
from .spawn import Primitive


class Terminal(Primitive):
    """In enter(): a new session whose controlling terminal is stdin (the pty slave)."""

    name = "terminal"

    def enter(self) -> None:
        os.setsid()
        kernel.set_controlling_terminal(0)


def open_pty() -> tuple[int, int]:
    """(master, slave) of a new pty, the slave sized like our terminal when we have one."""
    master, slave = os.openpty()
    if os.isatty(0):
        fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
    return master, slave


def relay(master: int, done: Callable[[], bool]) -> None:
    """Copy our stdin to ``master`` and ``master`` to our stdout until the
    container's side is closed (EIO on the master) or ``done()``; the user's
    terminal is in raw mode meanwhile and restored on every path."""
    saved = termios.tcgetattr(0) if os.isatty(0) else None
    previous = signal.getsignal(signal.SIGWINCH)
    if saved is not None:
        signal.signal(signal.SIGWINCH, lambda *_: fcntl.ioctl(
            master, termios.TIOCSWINSZ, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)))
    try:
        if saved is not None:
            tty.setraw(0)
        sources = [0, master]
        while not done():
            ready = select.select(sources, [], [], 0.1)[0]
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as e:          # EIO: every slave descriptor is closed
                    if e.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    break
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    sources.remove(0)         # our stdin ended; keep reading the container
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, previous)
