"""cgroups without running a container: parsers, documented v2 formats, the tables,
and the v2 driver's core files on the real v2 hierarchy of this host."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from labkit import cgroups, mountinfo
from labkit.cgroups import LIMITS, MissingControllerError, layout, units, v1, v2
from labkit.errors import UsageError
from labkit.restart import parse_restart


@pytest.mark.parametrize("text, expected", [
    ("512k", 512 * 1024), ("64M", 64 << 20), ("1.5G", 3 << 29), ("1048576", 1 << 20),
    ("64MB", 64 << 20), ("64MiB", 64 << 20), (4096, 4096),
])
def test_sizes(text, expected):
    assert units.parse_size(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("1mbit", 125_000), ("500kbit", 62_500), ("10MB/s", 10 << 20), ("2MB/s", 2 << 20),
    ("512k/s", 512 * 1024), ("1000", 1000), ("1gbit", 125_000_000),
])
def test_rates(text, expected):
    assert units.parse_rate(text) == expected


@pytest.mark.parametrize("parse, text, words", [
    (units.parse_size, "0", "zero"), (units.parse_size, "-5M", "negative"),
    (units.parse_size, "12Q", "malformed"), (units.parse_size, "M", "malformed"),
    (units.parse_rate, "0kbit", "zero"), (units.parse_rate, "fast", "malformed"),
    (units.parse_rate, "-1mbit", "negative"), (units.parse_count, "3.5", "malformed"),
    (units.parse_count, "0", "zero"), (units.parse_cpus, "abc", "malformed"),
    (units.parse_cpus, "0", "outside"), (units.parse_cpus, str((os.cpu_count() or 1) + 1), "outside"),
    (units.parse_cpus, "nan", "outside"),
])
def test_bad_values_are_one_clear_line(parse, text, words):
    with pytest.raises(UsageError) as e:
        parse(text)
    assert words in str(e.value) and "\n" not in str(e.value) and e.value.hint


def test_restart_policy():
    assert not parse_restart("no").should_restart(1, 0)
    three = parse_restart("on-failure:3")
    assert [three.should_restart(137, n) for n in range(4)] == [True, True, True, False]
    assert not three.should_restart(0, 0)
    assert parse_restart("on-failure").max_restarts is None
    for bad in ("always", "on-failure:0", "on-failure:x", "on-failure:-1"):
        with pytest.raises(UsageError):
            parse_restart(bad)


# Formats from Documentation/admin-guide/cgroup-v2.rst (its own examples).
def test_v2_cpu_max_format():
    row = next(r for r in LIMITS if r.name == "cpu")
    assert row.v2_file == "cpu.max" and row.v2_line(row.parse(0.5), "") == "50000 100000"
    assert row.v1_file == "cpu.cfs_quota_us" and row.v1_line(row.parse(1.5), "") == "150000"


def test_v2_memory_and_pids_max_format():
    memory = next(r for r in LIMITS if r.name == "memory")
    assert (memory.v2_file, memory.v2_line(memory.parse("64M"), "")) == ("memory.max", "67108864")
    assert memory.v1_file == "memory.limit_in_bytes"
    pids = next(r for r in LIMITS if r.name == "pids")
    assert (pids.v2_file, pids.v2_line(pids.parse(32), "")) == ("pids.max", "32")


def test_v2_io_max_format():
    row = next(r for r in LIMITS if r.name == "io_write_bps")
    assert (row.v2_file, row.v2_line(row.parse("2MB/s"), "8:16")) == ("io.max", "8:16 wbps=2097152")
    assert row.v1_line(row.parse("2MB/s"), "8:16") == "8:16 2097152"
    read = next(r for r in LIMITS if r.name == "io_read_bps")
    assert read.v2_line(1048576, "8:16") == "8:16 rbps=1048576"


def test_v2_documented_files_parse():
    events = v2.parse_flat_keyed("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert events["oom_kill"] == 1 and events["max"] == 12
    io_stat = v2.parse_nested_keyed(
        "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n"
        "8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 dios=3021\n")
    assert io_stat["8:16"]["wbytes"] == 314773504 and io_stat["8:0"]["rios"] == 8950
    io_max = v2.parse_nested_keyed("8:16 rbps=2097152 wbps=max riops=max wiops=120\n")
    assert io_max["8:16"] == {"rbps": 2097152, "wbps": -1, "riops": -1, "wiops": 120}
    assert v2.parse_flat_keyed("usage_usec 100\nnr_throttled 3\n") == {"usage_usec": 100, "nr_throttled": 3}


def test_v1_files_parse():
    assert v1.parse_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")["oom_kill"] == 2
    text = "254:0 Read 0\n254:0 Write 6291456\n7:0 Write 5\nTotal 6291461\n"
    assert v1.parse_io_service_bytes(text, "254:0") == {"Read": 0, "Write": 6291456}


# Mount tables as proc(5) shows them: a pure v2 lab VM, and a hybrid host with
# cpu and cpuacct in one hierarchy, plus a second, partial mount of memory.
PURE_V2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw shared:5 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /lab /srv/memory\\040view rw - cgroup cgroup rw,memory
36 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
37 31 0:33 / /sys/fs/cgroup/blkio rw - cgroup cgroup rw,blkio,release_agent=/x,clone_children
"""


def test_layout_of_pure_v2():
    where = layout.Layout(mountinfo.parse(PURE_V2), v2_controllers=("cpuset", "cpu", "io", "memory", "pids"))
    assert where.v2_mount == "/sys/fs/cgroup" and where.v1 == []
    assert where.version("memory") == "v2" and where.version("io") == "v2" and where.version("devices") is None
    assert cgroups.controllers(where) == {"cpu": "v2", "memory": "v2", "pids": "v2", "io": "v2"}
    assert where.labkit_dir(where.v2, "web") == "/sys/fs/cgroup/labkit/web"
    assert where.directory("0::/labkit/web") == "/sys/fs/cgroup/labkit/web"
    assert where.directory("0::/") == "/sys/fs/cgroup"
    assert where.directory("4:memory:/labkit/web") is None        # no v1 hierarchy here


def test_layout_of_a_hybrid_host():
    where = layout.Layout(mountinfo.parse(HYBRID), v2_controllers=())
    assert where.v2_mount == "/sys/fs/cgroup/unified"
    assert where.v1_mount("cpuacct") == where.v1_mount("cpu") == "/sys/fs/cgroup/cpu,cpuacct"
    assert where.v1_mount("name=systemd") == "/sys/fs/cgroup/systemd"
    assert where.v1_mount("memory") == "/sys/fs/cgroup/memory"      # the whole tree, not the /lab view
    assert where.v1_hierarchy("blkio").controllers == ("blkio",)     # flags are not controllers
    assert where.versions() == {"cpu": "v1", "cpuacct": "v1", "memory": "v1", "blkio": "v1"}
    assert cgroups.controllers(where) == {"cpu": "v1", "memory": "v1", "io": "v1"}
    assert cgroups.mounts(where)[0]["blkio"] == "/sys/fs/cgroup/blkio"
    # /proc/PID/cgroup lines: the hierarchy by its controllers, in any order
    assert where.directory("3:cpuacct,cpu:/labkit/web") == "/sys/fs/cgroup/cpu,cpuacct/labkit/web"
    assert where.directory("1:name=systemd:/user.slice") == "/sys/fs/cgroup/systemd/user.slice"
    assert where.directory("0::/labkit/web") == "/sys/fs/cgroup/unified/labkit/web"
    assert where.directory("9:pids:/labkit/web") is None            # pids is not mounted here


def test_a_mount_root_other_than_slash():
    """A mount of group /lab shows /lab's subtree: /lab/x is <point>/x, and
    /other (or /.., outside the reader's cgroup namespace) is not reachable."""
    memory = layout.Layout(mountinfo.parse(HYBRID.splitlines()[4]), v2_controllers=())
    assert memory.v1_mount("memory") == "/srv/memory view"
    assert memory.directory("5:memory:/lab/x") == "/srv/memory view/x"
    assert memory.directory("5:memory:/lab") == "/srv/memory view"
    assert memory.directory("5:memory:/labx") is None
    assert memory.directory("5:memory:/../x") is None


def test_layout_on_this_host_agrees_with_the_kernel(no_leaks):
    """Each directory layout finds for a process lists that process in its
    cgroup.procs; a Cgroup's groups are found below labkit/, and only then."""
    where = layout.read()
    own = where.dirs_of(os.getpid())
    assert own, "no cgroup hierarchy reached from here"
    for _, directory in own:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            assert str(os.getpid()) in f.read().split()
    assert not any(where.is_labkit(h, d) for h, d in own)
    with cgroups.Cgroup(f"t-layout-{os.getpid()}", pids=8) as cg:
        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            cg.add(sleeper.pid)
            found = [d for h, d in where.dirs_of(sleeper.pid) if where.is_labkit(h, d)]
            assert sorted(found) == sorted(cg.paths())
            assert set(cg.paths()) <= set(where.labkit_groups())
        finally:
            sleeper.kill()
            sleeper.wait()


def test_detection_matches_the_mounts():
    v1_mounts, unified = cgroups.mounts()
    with open("/proc/self/mounts") as f:
        lines = [line.split() for line in f]
    for c, version in cgroups.controllers().items():
        if version == "v1":
            assert any(m[2] == "cgroup" and v1.HIERARCHIES[c][0] in m[3].split(",") for m in lines)
        else:
            with open(os.path.join(unified, "cgroup.controllers")) as f:
                assert c in f.read().split()


def test_missing_controller_is_named():
    e = MissingControllerError("io")
    assert "io cgroup controller" in str(e) and "labkit doctor" in str(e) and e.exit_code == 125


def test_unknown_limit_and_bad_name():
    with pytest.raises(UsageError, match="unknown cgroup limit"):
        cgroups.Cgroup("x", swap="1G")
    with pytest.raises(UsageError, match="bad cgroup name"):
        cgroups.Cgroup("../escape", cpu=0.5)


def test_partition_maps_to_its_disk():
    assert os.path.exists(f"/sys/dev/block/{cgroups.block_device('/')}/queue")


# The v2 driver, for real, on what this host's v2 hierarchy offers (its core files).
needs_v2 = pytest.mark.skipif(cgroups.mounts()[1] is None, reason="no cgroup2 hierarchy mounted")


@needs_v2
def test_v2_core_files_for_real(no_leaks):
    group = v2.V2Group(cgroups.mounts()[1], f"test-v2-{os.getpid()}", [])
    group.create()
    busy = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        group.add(busy.pid)
        assert group.procs() == [busy.pid]
        assert f"0::/labkit/test-v2-{os.getpid()}" in open(f"/proc/{busy.pid}/cgroup").read()
        assert v2.parse_flat_keyed(group.read("cgroup.events"))["populated"] == 1
        before = v2.parse_flat_keyed(group.read("cpu.stat"))["usage_usec"]
        time.sleep(0.3)
        assert v2.parse_flat_keyed(group.read("cpu.stat"))["usage_usec"] > before    # it ran
        group.freeze(True)
        for _ in range(100):
            if v2.parse_flat_keyed(group.read("cgroup.events"))["frozen"] == 1:
                break
            time.sleep(0.01)
        assert v2.parse_flat_keyed(group.read("cgroup.events"))["frozen"] == 1
        frozen_at = v2.parse_flat_keyed(group.read("cpu.stat"))["usage_usec"]
        time.sleep(0.3)
        assert v2.parse_flat_keyed(group.read("cpu.stat"))["usage_usec"] - frozen_at < 20_000  # stopped
        group.freeze(False)
        group.kill()                                   # cgroup.kill: SIGKILL to everyone inside
        assert busy.wait(timeout=5) == -9
        assert v2.parse_flat_keyed(group.read("cgroup.events"))["populated"] == 0
    finally:
        busy.kill()
        busy.wait()
        group.remove()
    assert not os.path.exists(group.path)
    group.remove()                                     # twice is fine


@needs_v2
def test_v2_controller_file_absent_without_controller():
    """On v2 a controller's files appear only when the parent enables it in
    cgroup.subtree_control; a controller the root does not offer cannot be enabled.
    On a hybrid host cpu is on v1, so v2 does not offer it; on pure v2 every
    controller is offered, but devices is a v1 controller only (cgroup-v2.rst:
    on v2, device access is a BPF program)."""
    unified = cgroups.mounts()[1]
    with open(os.path.join(unified, "cgroup.controllers")) as f:
        offered = f.read().split()
    missing = [c for c in ("cpu", "memory", "pids", "io", "devices") if c not in offered]
    group = v2.V2Group(unified, f"test-v2c-{os.getpid()}", [missing[0]])
    with pytest.raises(OSError):
        group.create()                                 # "+cpu" refused: not in cgroup.controllers
    group.remove()
