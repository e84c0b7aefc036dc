"""Capabilities: decoding the five sets, dropping them for real, and keeping them dropped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import labkit_cli

from labkit import caps, kernel, pid, spawn, user, uts
from labkit.errors import UsageError
from labkit.spawn import Primitive

DOCKER_MASK = 0xA80425FB    # CapEff of a default `docker run` container
NOBODY = 65534
# The venv's interpreter may live under /root (0700), which a user namespace's root cannot
# search: programs run as the mapped uid use the system's Python.
SYSTEM_PYTHON = "/usr/bin/python3"


class BecomeUser(Primitive):
    """Test helper: the container's process drops to an unprivileged uid before execve."""

    name = "become-user"

    def __init__(self, uid: int) -> None:
        self.uid = uid

    def enter(self) -> None:
        os.setgroups([])
        os.setresgid(self.uid, self.uid, self.uid)
        os.setresuid(self.uid, self.uid, self.uid)


def status_of(text: str) -> dict[str, str]:
    """The fields of a /proc/PID/status dump."""
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


# --- names and masks --------------------------------------------------------------------

def test_table_matches_the_kernel():
    assert caps.last_cap() == len(caps.CAPABILITIES) - 1
    assert caps.read().bounding >> len(caps.CAPABILITIES) == 0     # no capability the table lacks


def test_docker_default_is_14_and_its_known_mask():
    assert len(caps.DOCKER_DEFAULT) == 14
    assert caps.mask_of(caps.DOCKER_DEFAULT) == DOCKER_MASK
    assert sorted(caps.decode(DOCKER_MASK)) == sorted(caps.DOCKER_DEFAULT)


@pytest.mark.parametrize("mask", [DOCKER_MASK, 1 << 21, (1 << 41) - 1, 0])
def test_decode_agrees_with_capsh(mask):
    out = subprocess.run(["capsh", f"--decode={mask:x}"], capture_output=True, text=True, check=True).stdout
    names = out.strip().split("=", 1)[1]
    expected = [] if not mask else [n.upper() for n in names.split(",")]
    assert caps.decode(mask) == expected


def test_canonical_names():
    for spelling in ("sys_admin", "SYS_ADMIN", "cap_sys_admin", " CAP_SYS_ADMIN "):
        assert caps.canonical(spelling) == "CAP_SYS_ADMIN"
    for bad in ("FOO", "CAP_", "sysadmin", ""):
        with pytest.raises(UsageError, match="unknown capability"):
            caps.canonical(bad)


def test_resolve_like_docker():
    assert caps.resolve() == sorted(caps.DOCKER_DEFAULT, key=caps.CAPABILITIES.index)
    assert "CAP_SYS_ADMIN" in caps.resolve(add=["SYS_ADMIN"])
    assert "CAP_NET_RAW" not in caps.resolve(drop=["net_raw"])
    assert caps.resolve(add=["NET_ADMIN"], drop=["ALL"]) == ["CAP_NET_ADMIN"]
    assert caps.resolve(add=["ALL"], drop=["SYS_TIME"]) == [c for c in caps.CAPABILITIES if c != "CAP_SYS_TIME"]
    with pytest.raises(UsageError, match="both added and dropped"):
        caps.resolve(add=["KILL"], drop=["CAP_KILL"])


def test_read_agrees_with_capget():
    effective, permitted, inheritable = kernel.capget()
    sets = caps.read()
    assert (sets.effective, sets.permitted, sets.inheritable) == (effective, permitted, inheritable)


# --- the real kernel --------------------------------------------------------------------

def test_container_gets_exactly_the_kept_sets(no_leaks):
    r = spawn.run(["cat", "/proc/self/status"], [pid.PidNamespace(), caps.Capabilities()])
    status = status_of(r.stdout)
    for line in ("CapPrm", "CapEff", "CapBnd"):
        assert int(status[line], 16) == DOCKER_MASK, line
    assert int(status["CapInh"], 16) == int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "1"


def test_ambient_keeps_caps_for_a_non_root_program(no_leaks):
    prim = caps.Capabilities(["NET_BIND_SERVICE"], ambient=True)
    r = spawn.run(["cat", "/proc/self/status"], [pid.PidNamespace(), prim])
    status = status_of(r.stdout)
    assert caps.decode(int(status["CapAmb"], 16)) == ["CAP_NET_BIND_SERVICE"]
    assert caps.decode(int(status["CapInh"], 16)) == ["CAP_NET_BIND_SERVICE"]


SETHOSTNAME = "import socket, errno\ntry:\n    socket.sethostname('dropped')\n    print('allowed')\n" \
              "except OSError as e:\n    print(errno.errorcode[e.errno])"


@pytest.mark.parametrize("keep, expected", [
    (["SYS_ADMIN"], "allowed"),
    ([], "EPERM"),
])
def test_a_dropped_capability_denies_its_call(keep, expected, no_leaks):
    r = spawn.run([SYSTEM_PYTHON, "-c", SETHOSTNAME],
                  [user.UserNamespace(), uts.UtsNamespace(), caps.Capabilities(keep)])
    assert r.stdout.strip() == expected, r.stderr


@pytest.fixture
def setuid_cat():
    """A set-user-ID-root copy of cat(1), so that it reports its own credentials."""
    # Not /tmp: where /tmp is a nosuid tmpfs (Debian 13, systemd's tmp.mount) the
    # kernel ignores the set-user-ID bit (mount(2), MS_NOSUID).
    directory = tempfile.mkdtemp(prefix="labkit-caps-test-", dir="/var/tmp")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "suid-cat")
    shutil.copy("/bin/cat", path)
    os.chmod(path, 0o4755)
    yield path
    shutil.rmtree(directory)


def run_setuid(path: str, prims: list[Primitive]) -> dict[str, str]:
    r = spawn.run([path, "/proc/self/status"], [pid.PidNamespace(), *prims, BecomeUser(NOBODY)])
    assert r.returncode == 0, r.stderr
    return status_of(r.stdout)


def test_setuid_root_program_gains_everything_without_a_drop(setuid_cat, no_leaks):
    status = run_setuid(setuid_cat, [])
    assert status["Uid"].split()[1] == "0"                   # effective uid: root, from the file
    assert "CAP_NET_ADMIN" in caps.decode(int(status["CapEff"], 16))


def test_dropped_capability_stays_dropped_for_a_setuid_program(setuid_cat, no_leaks):
    keep = [c for c in caps.CAPABILITIES if c != "CAP_NET_ADMIN"]
    status = run_setuid(setuid_cat, [caps.Capabilities(keep, set_no_new_privs=False)])
    assert status["Uid"].split()[1] == "0"                   # the setuid bit still worked...
    effective = caps.decode(int(status["CapEff"], 16))
    assert "CAP_CHOWN" in effective                          # ...and raised the others,
    assert "CAP_NET_ADMIN" not in effective                  # but not the dropped one


def test_no_new_privs_ignores_the_setuid_bit(setuid_cat, no_leaks):
    status = run_setuid(setuid_cat, [caps.Capabilities(caps.DOCKER_DEFAULT)])
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"] == "1"


# --- CLI ------------------------------------------------------------------------------

RAW_SOCKET = "import socket, errno\ntry:\n    socket.socket(socket.AF_INET, socket.SOCK_RAW, 1).close()\n" \
             "    print('allowed')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"


def test_cli_default_is_docker_14_and_drop_denies(no_leaks):
    r = labkit_cli("run", "--ns", "pid,uts,ipc", "--", "grep", "CapEff", "/proc/self/status")
    assert int(r.stdout.split()[1], 16) == DOCKER_MASK, r.stderr
    r = labkit_cli("run", "--ns", "pid,uts,ipc,net", "--", sys.executable, "-c", RAW_SOCKET)
    assert r.stdout.strip() == "allowed", r.stderr
    r = labkit_cli("run", "--ns", "pid,uts,ipc,net", "--cap-drop", "net_raw", "--", sys.executable, "-c", RAW_SOCKET)
    assert r.stdout.strip() == "EPERM", r.stderr


def test_cli_cap_add(no_leaks):
    r = labkit_cli("run", "--ns", "pid,uts,ipc", "--cap-drop", "ALL", "--cap-add", "SYS_TIME", "--",
                   "grep", "CapBnd", "/proc/self/status")
    assert caps.decode(int(r.stdout.split()[1], 16)) == ["CAP_SYS_TIME"], r.stderr


@pytest.mark.parametrize("args, message", [
    (["--cap-add", "FOO"], "unknown capability 'FOO'"),
    (["--cap-drop", "cap_nope"], "unknown capability"),
    (["--cap-add", "KILL", "--cap-drop", "KILL"], "both added and dropped"),
])
def test_cli_bad_capability_exits_125_with_one_line(args, message, no_leaks):
    r = labkit_cli("run", *args, "--", "true")
    assert r.returncode == 125
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
