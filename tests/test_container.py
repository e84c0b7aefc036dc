"""The full container (container.py, seccomp.py, labkit run/exec/ps), on the real kernel.

Each "must hold" of a default container is checked from inside (busybox in
the container) and from the host. The leak checks here name this test's own
objects (namespace inodes, cgroup directories, overlay directory, processes):
other engineers' containers may exist at the same time.
"""

from __future__ import annotations

import json
import os
import pty
import secrets
import select
import signal
import subprocess
import sys
import shutil
import tempfile
import termios
import time

import pytest

from conftest import labkit_cli
from labkit import bpf, caps, cgroups, container, devices, kernel, seccomp, syscalls
from labkit.container import Container
from labkit.errors import LabkitError

# Host /usr, read-only, so that a container can run the host's Python for exact errnos.
HOST_PYTHON = ["/usr:/usr:ro", "/usr/lib:/lib:ro", "/usr/lib64:/lib64:ro"]


def own_objects(c: Container) -> dict[str, object]:
    """What a running container made, seen from the host."""
    proc = c.process
    assert proc is not None
    return {"pid": proc.pid, "ns": {(k, v) for k, v in proc.namespaces().items()
                                     if v != kernel.ns_inode("self", k)},
            "cgroups": [p.paths() if isinstance(p, cgroups.Cgroup) else [p.path]
                        for p in c.prims if isinstance(p, (cgroups.Cgroup, devices.DeviceCgroup))],
            "overlay": [p.dir for p in c.prims if getattr(p, "dir", None)],
            "programs": [p.prog_id for p in c.prims if isinstance(p, devices.DeviceProgram)]}


def assert_gone(objects: dict[str, object]) -> None:
    """None of a stopped container's objects remains (namespaces may take a moment)."""
    for _ in range(50):
        alive = set()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for ns in kernel.NAMESPACES:
                try:
                    alive.add((ns, kernel.ns_inode(pid, ns)))
                except OSError:
                    pass
        if not objects["ns"] & alive:
            break
        time.sleep(0.1)
    assert not objects["ns"] & alive, "a namespace of the container is still held"
    assert not os.path.exists(f"/proc/{objects['pid']}")
    assert not any(os.path.exists(p) for paths in objects["cgroups"] for p in paths)
    assert not any(os.path.exists(d) for d in objects["overlay"])
    for prog_id in objects["programs"]:       # the device program goes with its group (a workqueue)
        for _ in range(50):
            try:
                os.close(bpf.prog_fd_by_id(prog_id))
            except FileNotFoundError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"device program {prog_id} is still loaded")


def run_inside(script: str, **spec: object) -> tuple[int, str, str, dict[str, object]]:
    """Run a shell script in a fresh container; return its status, output and objects.
    (The script starts with a short sleep so the host can read its namespaces while it runs.)"""
    c = Container(**spec)
    c.start(["/bin/sh", "-c", "sleep 0.5; " + script])
    try:
        objects = own_objects(c)
        status = c.wait(timeout=60)
        assert status is not None, "the container did not exit within 60 s"
        out, err = c.process.stdout, c.process.stderr
    finally:
        c.stop()
    assert_gone(objects)
    return status, out, err, objects


def test_default_container_sees_only_itself():
    marker = f"labkit-host-file-{secrets.token_hex(4)}"
    with open(f"/tmp/{marker}", "w") as f:
        f.write("host secret\n")
    try:
        status, out, err, _ = run_inside(
            "ps -o pid,comm; echo ---; ls /sys/class/net; echo ---; hostname; echo ---;"
            f"find / -name '{marker}' 2>/dev/null; echo ---; cat /proc/1/root/tmp/{marker} /proc/self/root/tmp/{marker}"
            f" /../tmp/{marker} 2>&1; echo ---; cat /proc/self/cgroup; echo ---;"
            "grep -E '^(CapPrm|CapEff|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
            hostname="inside")
    finally:
        os.unlink(f"/tmp/{marker}")
    procs, links, hostname, found, files, cgroup_lines, status_lines = out.split("---\n")
    assert [line.split()[1] for line in procs.splitlines()[1:]] == ["sh", "ps"]   # PID 1 and ps, nothing else
    assert procs.splitlines()[1].split()[0] == "1"
    assert links.split() == ["lo"]
    assert hostname == "inside\n" and os.uname().nodename != "inside"
    assert found == ""                                         # by no path under its /
    assert files.count("No such file or directory") == 3 and "host secret" not in files
    # cgroup_namespaces(7): rooted at its own cgroup, so every hierarchy reads "/".
    assert cgroup_lines.splitlines() and all(line.endswith(":/") for line in cgroup_lines.splitlines())
    sets = dict(line.split(":\t") for line in status_lines.splitlines())
    allowed = caps.mask_of(caps.DOCKER_DEFAULT)
    for name in ("CapPrm", "CapEff", "CapBnd"):
        assert int(sets[name], 16) & ~allowed == 0, f"{name} has a capability outside Docker's 14"
    assert int(sets["CapEff"], 16) == allowed
    assert sets["NoNewPrivs"] == "1" and sets["Seccomp"] == "2"


def test_bridge_container_has_lo_and_eth0():
    status, out, _, _ = run_inside("ls /sys/class/net", network="bridge")
    assert status == 0 and sorted(out.split()) == ["eth0", "lo"]


def test_proc_sys_is_read_only_and_denied_calls_fail_with_eperm():
    status, out, err, _ = run_inside(
        "echo x > /proc/sys/kernel/domainname; echo write=$?;"
        "mount -t tmpfs none /mnt; echo mount=$?; unshare -u true; echo unshare=$?;"
        "date -s 2001-01-01 >/dev/null; insmod /bin/busybox; echo insmod=$?")
    assert "write=1" in out and "Read-only file system" in err
    for word in ("mount", "unshare", "insmod"):
        assert f"{word}=0" not in out, f"{word} succeeded inside the container"
    assert "date: can't set date: Operation not permitted" in err   # (busybox date exits 0 anyway)
    assert "unshare: unshare(0x4000000): Operation not permitted" in err


SYSCALL_PROBE = """
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
found = {}
for name, nr in json.loads(sys.argv[1]).items():
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0),
                     ctypes.c_long(0), ctypes.c_long(0))
    found[name] = "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
nr_clone = %d
for flag in %r:
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr_clone), ctypes.c_long(flag | 17), ctypes.c_long(0),
                     ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
    if r == 0:
        os._exit(0)
    found["clone %%#x" %% flag] = "ok" if r > 0 else errno.errorcode[ctypes.get_errno()]
    if r > 0:
        os.waitpid(r, 0)
print(json.dumps(found))
""" % (syscalls.syscall_number("clone"), seccomp.NAMESPACE_FLAGS)


def probe(names: tuple[str, ...] = seccomp.DENIED, **spec: object) -> dict[str, str]:
    numbers = {n: syscalls.syscall_number(n) for n in names + ("clone3",)}
    c = Container(volumes=HOST_PYTHON, **spec)
    r = c.run(["/usr/bin/python3", "-c", SYSCALL_PROBE, json.dumps(numbers)], timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_seccomp_denies_dockers_list_with_eperm_and_clone3_with_enosys():
    found = probe()
    assert found.pop("clone3") == "ENOSYS"
    assert found == {name: "EPERM" for name in found}, found
    assert len(found) == len(seccomp.DENIED) + len(seccomp.NAMESPACE_FLAGS)


def test_without_the_filter_those_calls_reach_the_kernel():
    """The same probe unconfined: the kernel answers itself (EFAULT, EBADF, success),
    so the EPERMs above were the filter's, checked before the call ran."""
    # (only calls that are harmless when they run: ptrace(PTRACE_TRACEME) would really trace)
    # CAP_DAC_READ_SEARCH: older kernels check it before they read the handle (fs/fhandle.c,
    # handle_to_path: EPERM on 6.1 and 6.12), newer ones read the handle first (EFAULT on
    # 6.18); with it, every kernel reaches the read of the probe's bad pointer.
    found = probe(("unshare", "setns", "pivot_root", "keyctl", "open_by_handle_at"), seccomp_profile="unconfined",
                  cap_add=["CAP_DAC_READ_SEARCH"])
    assert found["clone3"] != "ENOSYS"
    assert found["unshare"] == "ok"                           # unshare(0) does nothing, allowed
    assert found["setns"] == "EINVAL"                         # fd 0 is no namespace file
    assert found["keyctl"] == "EINVAL" and found["open_by_handle_at"] == "EFAULT"
    assert found["pivot_root"] == "EPERM"                     # no CAP_SYS_ADMIN: the kernel's own EPERM
    assert found["clone 0x10000000"] == "ok"                  # a user namespace needs no privilege


def openable_host_disk() -> str | None:
    """MAJ:MIN of a whole disk the host itself can open (a sandboxed host may refuse some)."""
    for name in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{name}/dev") as f:
                number = f.read().strip()
            os.close(os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC))
            return number
        except OSError:
            continue
    return None


@pytest.mark.skipif(not devices.available(),
                    reason="no device control: neither a v1 devices hierarchy nor a cgroup2 mount")
def test_a_host_disk_node_made_inside_cannot_be_opened():
    """Through the v1 devices group on a hybrid host, the BPF program on pure v2."""
    disk = openable_host_disk()
    if disk is None:
        pytest.skip("the host itself can open none of its disks")
    script = (f"mknod /tmp/disk b {disk.replace(':', ' ')}; echo mknod=$?;"
              "dd if=/tmp/disk of=/dev/null bs=512 count=1 2>&1; echo dd=$?")
    status, out, _, _ = run_inside(script)
    assert "mknod=0" in out                                   # CAP_MKNOD is one of Docker's 14
    assert "Operation not permitted" in out and "dd=1" in out  # the device rules refuse the open
    # The same without the device rules: the open works, so those rules were the guard.
    status, out, _, _ = run_inside(script, device_rules=False)
    assert "dd=0" in out and "records in" in out


def test_the_default_container_keeps_cap_mknod_behind_the_hosts_device_rules():
    """Docker's 14, CAP_MKNOD included, on both platforms: the v1 devices group
    where the host has that controller, the BPF device program on pure v2."""
    if os.geteuid() != 0 or not devices.available():
        pytest.skip("needs root and device control (v1 devices or a cgroup2 mount)")
    c = Container()
    assert "CAP_MKNOD" in c.capabilities()
    kinds = {type(p) for p in c.primitives() if isinstance(p, (devices.DeviceCgroup, devices.DeviceProgram))}
    assert kinds == {devices.DeviceCgroup if devices.hierarchy() else devices.DeviceProgram}


def test_without_any_device_control_mknod_goes_and_asking_for_rules_is_one_clear_error(monkeypatch):
    """A host with neither mechanism (labkit's decision, so the host's mounts are stood in for)."""
    monkeypatch.setattr(devices, "mechanism", lambda: None)
    assert "CAP_MKNOD" not in Container().capabilities()
    box = Container(device_rules=True)                    # building it reads no kernel state
    with pytest.raises(LabkitError, match="^no device control on this host: .*or run without device rules$"):
        box.primitives()


def test_without_device_rules_the_default_container_has_no_cap_mknod():
    """Without device rules (not root, or no mechanism): CAP_MKNOD goes instead."""
    keep = caps.resolve()
    assert "CAP_MKNOD" in container.without_mknod_unless_asked(keep, [], device_rules=True)
    assert "CAP_MKNOD" not in container.without_mknod_unless_asked(keep, [], device_rules=False)
    assert "CAP_MKNOD" in container.without_mknod_unless_asked(keep, ["mknod"], device_rules=False)
    assert "CAP_MKNOD" in container.without_mknod_unless_asked(keep, ["ALL"], device_rules=False)
    disk = openable_host_disk()
    if disk is None:
        pytest.skip("the host itself can open none of its disks")
    # What such a container meets, for real: no device rules, no CAP_MKNOD.
    status, out, err, _ = run_inside(f"mknod /tmp/disk b {disk.replace(':', ' ')}; echo mknod=$?",
                                     device_rules=False, cap_drop=["MKNOD"])
    assert out == "mknod=1\n" and "Operation not permitted" in err, (out, err)


def test_fork_bomb_ends_at_pids_max_and_the_host_carries_on():
    c = Container()
    c.start(["/bin/sh", "-c", "i=0; while [ $i -lt 2000 ]; do sleep 30 & i=$((i+1)); done; echo done"])
    try:
        assert c.wait(timeout=120) is not None                # ash gives up at the first failed fork
        group = next(p for p in c.prims if isinstance(p, cgroups.Cgroup))
        stats, events = group.stats(), group.events()
        err = c.process.stderr
    finally:
        c.stop()
    assert "can't fork" in err
    assert stats["pids_peak"] == container.DEFAULT_LIMITS["pids"] and events["pids_max"] >= 1
    assert subprocess.run(["true"]).returncode == 0           # the host still forks


def test_memory_bomb_is_oom_killed_inside_its_limit():
    c = Container()
    c.start(["dd", "if=/dev/zero", "of=/dev/null", "bs=600M", "count=1"])
    try:
        assert c.wait(timeout=120) == -signal.SIGKILL
        group = next(p for p in c.prims if isinstance(p, cgroups.Cgroup))
        assert group.events()["oom_kill"] == 1
        assert group.stats()["memory_peak"] <= 512 << 20
    finally:
        c.stop()


def test_exec_joins_the_running_container():
    with Container(hostname="joined", name=f"t-exec-{os.getpid()}") as c:
        c.start(["sleep", "60"])
        objects = own_objects(c)
        r = c.exec(["/bin/sh", "-c", "hostname; ps -o pid,comm; cat /proc/self/cgroup;"
                                     "grep -E '^(CapEff|Seccomp):' /proc/self/status; ls /"])
        group = next(p for p in c.prims if isinstance(p, cgroups.Cgroup))
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == "joined"
        assert lines[1:3] == ["PID   COMMAND", "    1 sleep"]       # the container's PID namespace
        assert all(line.endswith(":/") for line in lines if line[:2].rstrip(":").isdigit())
        assert f"CapEff:\t{caps.mask_of(caps.DOCKER_DEFAULT):016x}" in lines
        assert "Seccomp:\t2" in lines and "linuxrc" in lines          # its root, not the host's
        assert r.stderr == ""
        assert group.stats()["pids_peak"] >= 2                        # the exec'd process counted
    assert_gone(objects)
    with pytest.raises(Exception, match="not running"):
        c.exec(["true"])


def test_cli_name_exec_ps_and_stale_state():
    name = f"t-cli-{os.getpid()}"
    run = subprocess.Popen([sys.executable, "-m", "labkit", "run", "--name", name, "--hostname", "named",
                            "--", "sleep", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            ps = labkit_cli("ps", "--json")
            if name in ps.stdout:
                break
            time.sleep(0.1)
        entry = next(json.loads(line) for line in ps.stdout.splitlines() if name in line)
        assert entry["command"] == ["sleep", "60"]
        r = labkit_cli("exec", name, "--", "sh", "-c", "hostname; exit 7")
        assert r.returncode == 7 and r.stdout == "named\n"
        again = labkit_cli("run", "--name", name, "--", "true")
        assert again.returncode == 125 and "running already" in again.stderr
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=30)
    assert name not in labkit_cli("ps").stdout
    # A state whose process is gone (a kill -9 of labkit run) is stale: ps removes it.
    stale = os.path.join(container.STATE_DIR, f"t-stale-{os.getpid()}")
    os.makedirs(stale)
    with open(os.path.join(stale, "state.json"), "w") as f:
        json.dump({"pid": 2 ** 22 + 1, "start_time": 1, "spec": {}}, f)
    assert "t-stale" not in labkit_cli("ps").stdout and not os.path.exists(stale)


@pytest.mark.parametrize("args, words", [
    (["run", "--memory", "3x", "--", "true"], "malformed memory limit"),
    (["run", "--ns", "pid,bogus", "--", "true"], "unknown namespace"),
    (["run", "--name", "a/b", "--", "true"], "bad container name"),
    (["run", "--cap-add", "NOPE", "--", "true"], "unknown capability"),
    (["run", "--security-opt", "apparmor=x", "--", "true"], "unknown --security-opt"),
    (["run", "--net", "bridge", "--ip", "192.168.1.5", "--", "true"], "outside the lab network"),
    (["exec", "no-such-container", "--", "true"], "no running container named"),
    (["exec", "x"], "no command given"),
])
def test_bad_input_is_one_line_and_exit_125(args, words):
    r = labkit_cli(*args)
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("labkit: ") and words in r.stderr
    assert "Traceback" not in r.stderr


def test_run_it_gives_a_controlling_terminal_and_restores_ours():
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "labkit", "run", "-it", "--", "sh"])
    before = termios.tcgetattr(fd)
    out = b""

    def read_until(token: bytes, timeout: float = 20) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while token not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    return

    read_until(b"# ")
    raw = termios.tcgetattr(fd)
    assert not raw[3] & termios.ECHO                           # our terminal in raw mode meanwhile
    os.write(fd, b"ps -o pid,tty,comm; echo $((6*7))\r")
    read_until(b"42\r\n")
    os.write(fd, b"sleep 100\r")
    time.sleep(0.5)
    os.write(fd, b"\x03")                                      # ^C: SIGINT from the container's tty
    read_until(b"^C")
    os.write(fd, b"exit 3\r")
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 3
    ps_line = next(line for line in text.splitlines() if line.strip().startswith("1 "))
    assert ps_line.split()[1] != "?"                           # PID 1 has a controlling terminal
    assert termios.tcgetattr(fd)[3] == before[3]               # the user's modes came back
    os.close(fd)


def test_cli_run_takes_every_option_at_once():
    shared = tempfile.mkdtemp(prefix="labkit-test-")
    os.chmod(shared, 0o755)                                  # the user namespace's root is uid 100000 here
    with open(os.path.join(shared, "f"), "w") as f:
        f.write("from the host\n")
    try:
        r = run_all_options(shared)
    finally:
        shutil.rmtree(shared)
    assert r.returncode == 4, r.stderr                       # failed: restarted once, then its status
    assert r.stdout.replace("\r\n", "\n").count("all\nfrom the host\n10.88.250.9/16\n") == 2
    expected = caps.mask_of(set(caps.DOCKER_DEFAULT) - {"CAP_MKNOD"} | {"CAP_NET_ADMIN"})
    assert f"CapEff:\t{expected:016x}" in r.stdout.replace("\r\n", "\n")
    assert "restart 1 of 1" in r.stderr


def run_all_options(shared: str) -> subprocess.CompletedProcess:
    return labkit_cli("run", "--rootfs", container.rootfs.default_rootfs(), "--hostname", "all",
                   "--ns", "pid,uts,ipc,mount,net,cgroup,user", "--volume", f"{shared}:/data:ro",
                   "--userns", "--uid-map", "0:100000:65536", "--gid-map", "0:100000:65536",
                   "--net", "bridge", "--ip", "10.88.250.9/16", "--bandwidth", "1mbit", "--memory", "64M",
                   "--cpus", "0.5", "--pids", "64", "--io-read-bps", "10MB/s", "--io-write-bps", "10MB/s",
                   "--cap-add", "NET_ADMIN", "--cap-drop", "MKNOD", "--restart", "on-failure:1",
                   "--name", f"t-all-{os.getpid()}", "-i", "-t", "--",
                   "sh", "-c", "hostname; cat /data/f; ip -4 addr show eth0 | grep -o '10.88[^ ]*';"
                               "grep -E '^(CapEff|Seccomp):' /proc/self/status; exit 4")
