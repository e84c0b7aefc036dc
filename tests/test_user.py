"""User namespace: maps checked like the kernel, root inside is 100000 outside, rootless runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import REPO, labkit_cli

from labkit import kernel, pid, spawn, user, uts
from labkit.errors import KernelError, UsageError
from labkit.user import IdMap

NOBODY = 65534    # an existing unprivileged uid/gid (nobody/nogroup) for the rootless tests


@pytest.fixture
def shared_dir():
    """A host directory the container sees through the shared filesystem, owned by
    the container's root (100000 outside), as a volume would be."""
    path = tempfile.mkdtemp(prefix="labkit-user-test-")
    os.chown(path, user.SUBORDINATE_START, user.SUBORDINATE_START)
    yield path
    shutil.rmtree(path)


# --- maps, checked before anything is created -------------------------------------------

def test_parse_map():
    assert user.parse_map("0:100000:65536") == IdMap(0, 100000, 65536)
    for bad in ("0:100000", "0:x:1", "-1:100000:1", "0:1:2:3", ""):
        with pytest.raises(UsageError, match="malformed"):
            user.parse_map(bad)


def test_default_map_as_root_is_the_unprivileged_range():
    assert user.default_map(0) == [IdMap(0, 100000, 65536)]


@pytest.mark.parametrize("maps, message", [
    ([IdMap(0, 100000, 10), IdMap(5, 200000, 10)], "overlap on the inside"),
    ([IdMap(0, 100000, 10), IdMap(100, 100005, 10)], "overlap on the outside"),
    ([IdMap(0, 0, 1)], "host's root"),
    ([IdMap(0, 100000, 0)], "outside the range"),
    ([IdMap(0, 4294967290, 10)], "outside the range"),
    ([IdMap(n, 100000 + n, 1) for n in range(341)], "341 ranges"),
    ([], "0 ranges"),
])
def test_maps_the_kernel_would_refuse_are_usage_errors(maps, message):
    with pytest.raises(UsageError, match=message):
        user.check_maps(maps, "uid map", 0)


def test_adjacent_ranges_do_not_overlap():
    maps = [IdMap(0, 100000, 10), IdMap(10, 100010, 10)]
    assert user.check_maps(maps, "uid map", 0) == maps


def test_to_host():
    maps = [IdMap(0, 100000, 10), IdMap(1000, 201000, 5)]
    assert user.to_host(maps, 0) == 100000
    assert user.to_host(maps, 1004) == 201004
    assert user.to_host(maps, 10) == 65534           # unmapped: the overflow ID


# --- the real kernel --------------------------------------------------------------------

def test_root_inside_is_100000_outside(no_leaks):
    with spawn.spawn(["sleep", "30"], [user.UserNamespace(), pid.PidNamespace()]) as proc:
        with open(f"/proc/{proc.pid}/status") as f:
            ids = {line.split(":")[0]: line.split()[1:] for line in f if line[:4] in ("Uid:", "Gid:")}
        assert ids == {"Uid": ["100000"] * 4, "Gid": ["100000"] * 4}
        assert user.read_map(proc.pid, "uid") == [IdMap(0, 100000, 65536)]
        assert kernel.ns_inode(proc.pid, "user") != kernel.ns_inode("self", "user")
    r = spawn.run(["sh", "-c", "id -u; id -g; cat /proc/self/uid_map"], [user.UserNamespace()])
    assert r.stdout.split() == ["0", "0", "0", "100000", "65536"]


def test_a_file_made_by_root_inside_is_owned_by_the_mapped_uid(shared_dir, no_leaks):
    path = os.path.join(shared_dir, "made-inside")
    r = spawn.run(["sh", "-c", f"echo hi > {path}; stat -c '%u %g' {path}"], [user.UserNamespace()])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0"]            # root, as the container sees it
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (100000, 100000)  # as the host sees it: never 0


def test_a_custom_map_decides_the_owner_on_the_host(shared_dir, no_leaks):
    os.chown(shared_dir, 200000, 200000)
    path = os.path.join(shared_dir, "custom")
    prim = user.UserNamespace([IdMap(0, 200000, 1000)], [IdMap(0, 200000, 1000)])
    r = spawn.run(["sh", "-c", f"touch {path}"], [prim])
    assert r.returncode == 0, r.stderr
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (200000, 200000)


def test_root_inside_cannot_write_a_host_root_directory(no_leaks):
    host_dir = tempfile.mkdtemp(prefix="labkit-user-test-")   # root-owned, 0700 -> 0755
    os.chmod(host_dir, 0o755)
    try:
        r = spawn.run(["sh", "-c", f"touch {host_dir}/x"], [user.UserNamespace()])
        assert r.returncode != 0 and "Permission denied" in r.stderr
        assert os.listdir(host_dir) == []
    finally:
        shutil.rmtree(host_dir)


def test_a_map_can_be_written_only_once(no_leaks):
    with spawn.spawn(["sleep", "30"], [user.UserNamespace()]) as proc:
        with pytest.raises(KernelError, match="EPERM"):
            user._write(f"/proc/{proc.pid}/uid_map", "0 300000 1\n")
        assert user.read_map(proc.pid, "uid") == [IdMap(0, 100000, 65536)]


def test_its_capabilities_work_on_its_own_hostname(no_leaks):
    host = os.uname().nodename
    r = spawn.run(["hostname"], [user.UserNamespace(), uts.UtsNamespace("in-userns")])
    assert r.stdout.strip() == "in-userns"
    assert os.uname().nodename == host


# --- CLI ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--uid-map", "0:100000"], "malformed"),
    (["--uid-map", "0:100000:10", "--uid-map", "5:300000:10"], "overlap"),
    (["--gid-map", "0:0:65536"], "host's root"),
    (["--uid-map", "0:4294967295:1"], "outside the range"),
])
def test_cli_bad_maps_exit_125_with_one_line(args, message, no_leaks):
    r = labkit_cli("run", "--userns", *args, "--", "true")
    assert r.returncode == 125
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_cli_maps_need_userns():
    r = labkit_cli("run", "--uid-map", "0:100000:1", "--", "true")
    assert r.returncode == 125 and "add --userns" in r.stderr


def test_cli_userns_root_inside(no_leaks):
    r = labkit_cli("run", "--userns", "--uid-map", "0:100000:1000", "--ns", "pid,uts,ipc", "--", "sh", "-c",
                   "id -u; cat /proc/self/uid_map /proc/self/gid_map")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0", "100000", "1000", "0", "100000", "65536"]


def test_cli_userns_with_the_default_namespaces_and_rootfs(no_leaks):
    r = labkit_cli("run", "--userns", "--", "sh", "-c", "id -u; cat /proc/self/uid_map; touch /made-inside")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0", "100000", "65536"]


def _as_nobody(*args: str) -> subprocess.CompletedProcess:
    """`labkit ARGS` run by the unprivileged host user nobody (setpriv(1) drops root)."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-m", "labkit", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_rootless_run(no_leaks):
    r = _as_nobody("run", "--userns", "--ns", "user,pid,uts,ipc,net", "--net", "none", "--hostname", "rootless",
                   "--", "sh", "-c", "id -u; hostname; cat /proc/self/uid_map /proc/self/setgroups; echo $$")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "rootless", "0", str(NOBODY), "1", "deny", "1"]


def test_rootless_run_with_a_mount_namespace(no_leaks):
    r = _as_nobody("run", "--userns", "--ns", "user,pid,uts,ipc,mount", "--net", "none", "--", "id", "-u")
    assert (r.returncode, r.stdout) == (0, "0\n"), r.stderr


@pytest.mark.parametrize("args, message", [
    (["--", "true"], "labkit needs root"),
    (["--userns", "--uid-map", "0:100000:65536", "--", "true"], "needs host root"),
    (["--userns", "--net", "bridge", "--", "true"], "needs host root"),
])
def test_rootless_refusals_are_one_clear_line(args, message, no_leaks):
    r = _as_nobody("run", *args)
    assert r.returncode == 125, r.stderr
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
