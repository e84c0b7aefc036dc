"""The lab VM for the end-to-end test: boot it, reach its JupyterLab, end it on every path.

scripts/labvm.py run boots the image under qemu with this checkout at /labkit
and the host's 127.0.0.1:PORT forwarded to the VM's 8888 (the labkit-jupyter
service). The job it runs is e2e/vm-job.sh: it serves the handouts (the student
versions) of this checkout's notebooks from a tmpfs, prints the login URL, and
waits for the file ``e2e-done`` that ``LabVM.finish`` creates through the
Jupyter contents API.

qemu is labvm.py's child. To end the VM early, SIGKILL qemu (its disks are in
snapshot mode: nothing persists) and let labvm.py remove its run directory; the
whole process group (the session start_new_session made) is killed only if that
does not end it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABVM = os.path.join(REPO, "scripts", "labvm.py")
DONE_MARKER = "e2e-done"
URL_LINE = re.compile(r"^labkit-e2e: url (http://\S+)$")
TIMINGS: dict[str, float] = {}          # what the test measured, printed at the end of the session


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel picks it: bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """The PIDs whose parent is pid (/proc/PID/task/TID/children, proc(5))."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
    except FileNotFoundError:
        pass
    return found


class LabVM:
    """One boot of the lab VM running e2e/vm-job.sh, its output kept in ``lines``."""

    def __init__(self, release: str, wait_max: int) -> None:
        self.release = release
        self.port = free_port()
        self.lines: list[str] = []
        self.url: str | None = None
        self._url_seen = threading.Event()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, LABVM, "run", "--release", release, "--port", str(self.port),
             "--", "bash", "e2e/vm-job.sh", str(wait_max)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            print(f"vm| {line}", file=sys.stderr, flush=True)
            m = URL_LINE.match(line.strip())
            if m:
                self.url = m.group(1)
                self._url_seen.set()
        self._url_seen.set()               # the VM ended: wake whoever waits for the URL

    def output(self, last: int = 60) -> str:
        return "\n".join(self.lines[-last:])

    @property
    def token(self) -> str:
        assert self.url is not None
        return self.url.split("token=", 1)[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_url(self, timeout: float) -> float:
        """Seconds from the start until the job printed the login URL (the VM booted, the
        service restarted on the copy)."""
        if not self._url_seen.wait(timeout) or self.url is None:
            raise AssertionError(f"the lab VM printed no login URL within {timeout:.0f} s "
                                 f"(labvm exit {self.proc.poll()}); its output ends with:\n{self.output()}")
        return time.monotonic() - self.started

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> dict:
        """One call to the Jupyter server's REST API, with the token."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read()
        return json.loads(text) if text else {}

    def wait_service(self, timeout: float) -> float:
        """Seconds from the start until the server answers /api/status on the forwarded port.
        qemu's forward accepts a connection before the guest listens, so only an HTTP answer counts."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the lab VM ended (exit {self.proc.returncode}) before its "
                                     f"JupyterLab answered; its output ends with:\n{self.output()}")
            try:
                self.api("GET", "/api/status", timeout=10)
                return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
                last = e
                time.sleep(1)
        raise AssertionError(f"labkit-jupyter did not answer on 127.0.0.1:{self.port} within "
                             f"{timeout:.0f} s (last error: {last})")

    def finish(self, timeout: float) -> int:
        """Tell the job it is done (the marker file, through the contents API), wait for the
        VM to power off, and return labvm's exit status (the job's)."""
        self.api("PUT", f"/api/contents/{DONE_MARKER}", {"type": "file", "format": "text", "content": ""})
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the lab VM did not power off within {timeout:.0f} s after "
                                 f"{DONE_MARKER}; its output ends with:\n{self.output()}") from None

    def stop(self) -> None:
        """End the VM if it still runs: SIGKILL qemu, then the whole group if labvm lingers."""
        if self.proc.poll() is None:
            for pid in children(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
