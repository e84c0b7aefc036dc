"""`labkit cleanup` after a crash: kill -9 the labkit process, then clean up.

A `kill -9` gives labkit no chance to run release(): the container dies with
it (PR_SET_PDEATHSIG), but its cgroups, overlay directory, network namespace
name, veth, named state and tracefs instance stay. `labkit cleanup` must find
and remove every one of them, and leave the host as the test found it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, labkit_cli, settled_leaks
from hoststate import leaks, snapshot

from labkit.cgroups import layout

CRASHES = {
    "run": ["run", "--name", "crashme", "--net", "bridge", "--memory", "64M", "--pids", "32",
            "--", "sleep", "60"],
    "trace": ["trace", "--ns", "pid,uts", "--", "sleep", "60"],
}


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("kind", sorted(CRASHES))
def test_cleanup_removes_what_a_killed_labkit_left(kind):
    before = snapshot()
    launcher = subprocess.Popen([sys.executable, "-m", "labkit", *CRASHES[kind]], cwd=REPO)
    try:
        # the container runs once a sleep is in a PID namespace other than ours
        own_pidns = os.stat("/proc/self/ns/pid").st_ino

        def contained_sleep() -> bool:
            for p in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{p}/comm") as f:
                        if f.read().strip() == "sleep" and os.stat(f"/proc/{p}/ns/pid").st_ino != own_pidns:
                            return True
                except OSError:
                    pass
            return False

        assert wait_for(contained_sleep), "the container did not start"
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    # the container's processes die with it; what labkit made on the host stays
    left = leaks(before, snapshot())
    left.pop("namespaces", None)
    assert left, "a kill -9 left nothing behind: this test would prove nothing"

    r = labkit_cli("cleanup")
    assert r.returncode == 0, r.stderr
    assert "removed" in r.stdout
    assert not settled_leaks(before), f"labkit cleanup left {settled_leaks(before)}"
    r = labkit_cli("cleanup")
    assert r.returncode == 0 and "nothing to clean" in r.stdout, r.stdout


def test_cleanup_after_kill_9_of_a_detached_containers_supervisor():
    """`labkit run -d`: the labkit command has returned; the supervisor holds the
    container. kill -9 of the supervisor kills the container (PR_SET_PDEATHSIG)
    and leaves its cgroups, overlay directory, network objects, state and record."""
    before = snapshot()
    name = f"crash-d-{os.getpid()}"
    r = labkit_cli("run", "-d", "--name", name, "--net", "bridge", "--memory", "64M", "--", "sleep", "60")
    assert r.returncode == 0, r.stderr
    with open(f"/run/labkit/detached/{name}/supervisor") as f:
        supervisor = int(f.read().split()[0])
    state = f"/run/labkit/containers/{name}/state.json"
    with open(state) as f:
        container_pid = json.load(f)["pid"]
    os.kill(supervisor, signal.SIGKILL)
    assert wait_for(lambda: not os.path.exists(f"/proc/{container_pid}/ns")), "the container outlived its supervisor"
    left = leaks(before, snapshot())
    left.pop("namespaces", None)
    assert "detached records" in left and "cgroups" in left, left
    r = labkit_cli("wait", name)
    assert r.returncode == 125 and "died" in r.stderr, r.stderr
    r = labkit_cli("cleanup")
    assert r.returncode == 0, r.stderr
    assert not settled_leaks(before), f"labkit cleanup left {settled_leaks(before)}"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cleanup_kills_and_removes_nested_groups(version):
    """A group left under labkit/ with a group inside it and a process in that:
    `labkit cleanup` kills the process (v2: cgroup.kill; v1: SIGKILL until
    cgroup.procs is empty) and removes both groups, deepest first, wherever the
    hierarchy is mounted: v2 at /sys/fs/cgroup (pure v2) or
    /sys/fs/cgroup/unified (this project's hybrid hosts), v1 at
    /sys/fs/cgroup/<controller>. The issue: on pure v2, cleanup looked for
    /sys/fs/cgroup/<controller>/labkit and left /sys/fs/cgroup/labkit/<name>."""
    where = layout.read()
    hierarchy = where.v2 if version == "v2" else where.v1_hierarchy("pids")
    if hierarchy is None:
        pytest.skip(f"no cgroup {version} hierarchy here: pure cgroup v2 (the lab VMs) has no v1 "
                    f"hierarchy" if version == "v1" else "no cgroup2 mount: a v1-only host")
    before = snapshot()
    group = where.labkit_dir(hierarchy, f"t-clean-{os.getpid()}")
    inner = os.path.join(group, "inner")
    os.makedirs(inner)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with open(os.path.join(inner, "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        assert wait_for(lambda: os.path.join(f"/{layout.LABKIT}", os.path.basename(group), "inner")
                        in open(f"/proc/{sleeper.pid}/cgroup").read())
        r = labkit_cli("cleanup")
        assert r.returncode == 0, r.stderr
        assert f"removed cgroup {inner}\n" in r.stdout and f"removed cgroup {group}\n" in r.stdout
        assert r.stdout.index(inner) < r.stdout.index(f"cgroup {group}\n")      # deepest first
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()
        for d in (inner, group):
            if os.path.isdir(d):
                os.rmdir(d)
    assert not os.path.exists(group)
    assert not settled_leaks(before), f"left {settled_leaks(before)}"


def test_the_leak_checker_sees_a_new_tracefs_mount_and_groups_in_every_hierarchy(tmp_path):
    """hoststate (which imports nothing from labkit) reports a tracefs mount that
    appeared (made here in a private mount namespace, so the host's table is
    untouched) and a group below labkit/ in the v2 hierarchy and in a v1 one,
    wherever they are mounted."""
    point = tmp_path / "trace mnt"                       # a space: mountinfo writes \040
    point.mkdir()
    code = ("import subprocess, sys; sys.path.insert(0, sys.argv[1]); from hoststate import leaks, snapshot;"
            "before = snapshot(); subprocess.run(['mount', '-t', 'tracefs', 'tracefs', sys.argv[2]], check=True);"
            "print(sorted(leaks(before, snapshot()).get('mounts', [])))")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code,
                          os.path.dirname(__file__), str(point)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr([f"tracefs {point} tracefs"])

    where = layout.read()
    made = [where.labkit_dir(h, f"t-hoststate-{os.getpid()}")
            for h in (where.v2, where.v1_hierarchy("pids")) if h is not None]
    before = snapshot()
    try:
        for d in made:
            os.makedirs(d)
        assert leaks(before, snapshot()).get("cgroups") == set(made)
    finally:
        for d in made:
            if os.path.isdir(d):
                os.rmdir(d)
    assert "cgroups" not in leaks(before, snapshot())


def test_cleanup_removes_only_labkits_exact_names_and_dry_run_removes_nothing():
    """Links that look like labkit's but are not its names (``lkfoo``, and
    ``lk-010-1``: veth_name writes no leading zero) and a netns ``labkit-box``
    survive; a veth pair named as labkit names one (``lk-0-251``, ``lk-0-251c``)
    and a group under labkit/ are leftovers. ``--dry-run`` lists the leftovers and nothing else,
    and removes nothing; then `labkit cleanup` removes exactly them."""
    from pyroute2 import IPRoute

    from labkit import net

    before = snapshot()
    ours, theirs = "lk-0-251", ["lkfoo", "lk-010-1"]
    foreign_netns = os.path.join(net.NETNS_DIR, "labkit-box")
    where = layout.read()
    hierarchy = where.v2 or where.v1_hierarchy("pids")
    group = where.labkit_dir(hierarchy, f"t-dry-{os.getpid()}")
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=ours, kind="veth", peer=ours + "c")          # both ends labkit's
            for name in theirs:
                ipr.link("add", ifname=name, kind="bridge")
            os.makedirs(net.NETNS_DIR, exist_ok=True)
            open(foreign_netns, "w").close()
            os.makedirs(group)

            dry = labkit_cli("cleanup", "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert f"would remove link {ours}\n" in dry.stdout and f"link {ours}c\n" in dry.stdout
            assert f"would remove cgroup {group}\n" in dry.stdout
            assert not any(name in dry.stdout for name in theirs) and "labkit-box" not in dry.stdout
            assert "removed" not in dry.stdout
            assert ipr.link_lookup(ifname=ours) and os.path.isdir(group)          # all still there

            done = labkit_cli("cleanup")
            assert done.returncode == 0, done.stderr
            assert f"removed link {ours}\n" in done.stdout and f"removed cgroup {group}\n" in done.stdout
            assert not ipr.link_lookup(ifname=ours) and not ipr.link_lookup(ifname=ours + "c")
            assert not os.path.exists(group)
            assert all(ipr.link_lookup(ifname=name) for name in theirs) and os.path.exists(foreign_netns)
        finally:
            for name in [ours, ours + "c", *theirs]:
                for index in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=index)
            if os.path.exists(foreign_netns):
                os.unlink(foreign_netns)
            if os.path.isdir(group):
                os.rmdir(group)
    assert not settled_leaks(before), f"left {settled_leaks(before)}"
