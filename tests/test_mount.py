"""Mount namespace and root filesystem: checked on the real kernel, from both sides."""

from __future__ import annotations

import os
import secrets
import signal
import time

import pytest
from conftest import labkit_cli

from labkit import kernel, mount, pid, rootfs, spawn
from labkit.errors import CommandNotFoundError, KernelError, UsageError

ROOTFS = rootfs.default_rootfs(progress=None)


def container(*volumes: mount.Volume, **kw) -> list[spawn.Primitive]:
    return [pid.PidNamespace(mount_proc=False), mount.MountNamespace(ROOTFS, list(volumes), **kw)]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# ---- --volume parsing -----------------------------------------------------------------

def test_parse_volume_accepts_rw_and_ro(tmp_path):
    assert mount.parse_volume(f"{tmp_path}:/data") == mount.Volume(str(tmp_path), "/data", False)
    assert mount.parse_volume(f"{tmp_path}:/data//x/:ro") == mount.Volume(str(tmp_path), "/data/x", True)
    assert mount.parse_volume(f"{tmp_path}:/d:rw").readonly is False


@pytest.mark.parametrize("spec,message", [
    ("/no/such/labkit/path:/data", "does not exist on the host"),
    ("{tmp}:data", "is not an absolute path"),
    ("{tmp}:/a/../etc", "contains '..'"),
    ("{tmp}:/", "cannot replace the container's /"),
    ("{tmp}", "malformed volume"),
    ("{tmp}:/data:rx", "malformed volume"),
    (":/data", "malformed volume"),
    ("{tmp}:/a:ro:x", "malformed volume"),
])
def test_parse_volume_refuses(tmp_path, spec, message):
    with pytest.raises(UsageError, match=message):
        mount.parse_volume(spec.format(tmp=tmp_path))


# ---- the new root ---------------------------------------------------------------------

def test_container_sees_its_rootfs_and_not_the_hosts(no_leaks):
    host_root = os.stat("/")
    r = spawn.run(["sh", "-c", "stat -c %d:%i / /proc/1/root/; ls -a /; cat /proc/self/mountinfo"],
                  container())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    root, proc1_root = lines[0], lines[1]
    assert root == proc1_root                                  # /proc/1/root is the container's /
    assert root != f"{host_root.st_dev}:{host_root.st_ino}"
    listing = set(lines[2:lines.index(next(line for line in lines if line[0].isdigit() and " - " in line))])
    assert listing == {".", ".."} | set(os.listdir(ROOTFS))    # the image, no old root left
    table = [line.split(" - ")[1].split()[0] for line in lines if " - " in line]
    assert table[0] == "overlay"
    assert "ext4" not in table                                 # no host filesystem mounted inside


def test_host_file_created_after_start_is_not_visible_inside(tmp_path, no_leaks):
    sync = tmp_path / "sync"
    sync.mkdir()
    marker = f"/tmp/labkit-marker-{secrets.token_hex(4)}"
    script = ("until [ -e /sync/go ]; do sleep 0.02; done; "
              f"ls /sync; test -e {marker} && echo VISIBLE; "
              f"test -e /proc/1/root{marker} && echo VISIBLE-THROUGH-PROC; echo done")
    try:
        with spawn.spawn(["sh", "-c", script], container(mount.volume(str(sync), "/sync"))) as proc:
            with open(marker, "w") as f:
                f.write("host only\n")
            # The kernel's own view of the container's root, from the host, agrees.
            assert not os.path.exists(f"/proc/{proc.pid}/root{marker}")
            assert os.path.exists(f"/proc/{proc.pid}/root/sync")
            (sync / "go").write_text("")                       # the volume is shared: it does arrive
            assert proc.wait(timeout=20) == 0
        assert proc.stdout == "go\ndone\n", proc.stdout + proc.stderr
    finally:
        os.unlink(marker)


def test_host_does_not_see_the_container_mounts(no_leaks):
    prims = container(tmpfs=["/scratch"])
    with spawn.spawn(["sleep", "30"], prims) as proc:
        inside = mount.mountinfo(proc.pid)
        host = mount.mountinfo()
        assert {e.mount_point for e in inside} >= {"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/sys", "/scratch"}
        assert not [e for e in host if e.mount_point.startswith(prims[1].new_root)]
        assert not [e for e in host if e.fstype == "overlay" and prims[1].upper in e.options]
        assert all(e.propagation == "private" for e in inside)   # nothing propagates to the host
        assert os.path.isdir(prims[1].upper)


def test_copy_on_write_two_containers_from_one_image(no_leaks):
    a_prims, b_prims = container(), container()
    with open(ROOTFS + "/etc/hostname") as f:
        image_hostname = f.read()
    with spawn.spawn(["sh", "-c", "echo from-a > /hello; echo changed > /etc/hostname; sleep 30"], a_prims) as a, \
            spawn.spawn(["sleep", "30"], b_prims) as b:
        assert wait_for(lambda: os.path.exists(f"/proc/{a.pid}/root/hello"))
        assert wait_for(lambda: open(f"/proc/{a.pid}/root/etc/hostname").read() == "changed\n")
        assert not os.path.exists(f"/proc/{b.pid}/root/hello")            # B never sees A's write
        assert open(f"/proc/{b.pid}/root/etc/hostname").read() == image_hostname
        assert not os.path.exists(ROOTFS + "/hello")                      # the image is unchanged
        assert open(ROOTFS + "/etc/hostname").read() == image_hostname
        upper = a_prims[1].upper
        assert sorted(os.listdir(upper)) == ["etc", "hello"]              # copied up: only what changed
        assert os.listdir(upper + "/etc") == ["hostname"]
        assert os.listdir(b_prims[1].upper) == []
    assert not os.path.exists(os.path.dirname(upper))                     # released: upper/work gone


def test_volumes_read_write_and_read_only(tmp_path, no_leaks):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "file").write_text("keep\n")
    r = spawn.run(["sh", "-c", "echo written > /rw/new; cat /ro/file; echo x > /ro/file"],
                  container(mount.volume(str(rw), "/rw"), mount.volume(str(ro), "/ro", readonly=True)))
    assert r.returncode != 0
    assert (rw / "new").read_text() == "written\n"
    assert r.stdout == "keep\n"
    assert "Read-only file system" in r.stderr
    assert (ro / "file").read_text() == "keep\n"


def test_file_volume(tmp_path, no_leaks):
    f = tmp_path / "config"
    f.write_text("setting=1\n")
    r = spawn.run(["cat", "/etc/app.conf"], container(mount.volume(str(f), "/etc/app.conf", True)))
    assert (r.returncode, r.stdout) == (0, "setting=1\n")


def test_minimal_dev_proc_and_sys(no_leaks):
    script = ("ls /dev | tr '\\n' ' '; echo; echo data > /dev/null && echo null-ok; "
              "head -c 4 /dev/zero | wc -c; set -- /proc/[0-9]*; echo $#; "
              "wc -c < /proc/keys; echo 1 > /proc/sys/kernel/ns_last_pid || echo proc-sys-ro; "
              "touch /sys/labkit || echo sys-ro")
    r = spawn.run(["sh", "-c", script], container())
    lines = r.stdout.splitlines()
    assert set(lines[0].split()) == set(mount.DEVICES) | set(mount.DEV_LINKS) | {"pts", "shm"}
    # The shell's own glob (no fork) sees one process in its PID namespace: itself.
    assert lines[1:] == ["null-ok", "4", "1", "0", "proc-sys-ro", "sys-ro"], r.stdout + r.stderr
    # 3 PIDs in /proc: sh (1), ls and grep of the pipe. /proc/keys is masked by /dev/null.


def test_masked_and_read_only_paths_are_mounted(no_leaks):
    with spawn.spawn(["sleep", "30"], container()) as proc:
        table = {e.mount_point: e for e in mount.mountinfo(proc.pid)}
    for path in mount.MASKED_PATHS:
        if os.path.exists(path):                    # runc masks only what the kernel has
            assert path in table, path
    for path in mount.READONLY_PATHS:
        if os.path.exists(path):
            assert table[path].options.startswith("ro"), path


def escape_attempt(chroot_into: str | None = None, mnt_of_pid: int | None = None) -> tuple[int, int]:
    """In a forked process: be confined (chroot, or join a container's mount
    namespace), then try the classic escape; return (st_dev, st_ino) of the "/" reached."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            if chroot_into:
                os.chroot(chroot_into)
                os.chdir("/")
            else:
                fd = os.open(f"/proc/{mnt_of_pid}/ns/mnt", os.O_RDONLY)
                kernel.setns(fd, kernel.CLONE_NEWNS)    # also sets root and cwd to the namespace's root
            os.chroot("tmp")              # new root below us; our cwd is now outside it
            for _ in range(64):
                os.chdir("..")            # walk up: nothing stops at a root we are not under
            os.chroot(".")
            st = os.stat("/")
            os.write(write, b"%d %d" % (st.st_dev, st.st_ino))
        finally:
            os._exit(0)
    os.close(write)
    data = os.read(read, 100)
    os.close(read)
    os.waitpid(child, 0)
    dev, ino = data.split()
    return int(dev), int(ino)


def test_chroot_can_be_escaped_pivot_root_cannot(no_leaks):
    host = os.stat("/")
    assert escape_attempt(chroot_into=ROOTFS) == (host.st_dev, host.st_ino)   # escaped
    with spawn.spawn(["sleep", "30"], container()) as proc:
        croot = os.stat(f"/proc/{proc.pid}/root")
        assert escape_attempt(mnt_of_pid=proc.pid) == (croot.st_dev, croot.st_ino)
    assert (croot.st_dev, croot.st_ino) != (host.st_dev, host.st_ino)


# ---- every path releases ----------------------------------------------------------------

def run_dirs() -> set[str]:
    return set(os.listdir(mount.RUN_DIR)) if os.path.isdir(mount.RUN_DIR) else set()


def test_command_missing_in_rootfs_leaves_nothing(no_leaks):
    before = run_dirs()
    with pytest.raises(CommandNotFoundError):
        spawn.run(["python3", "-c", "1"], container())
    assert run_dirs() - before == set()


def test_failed_mount_step_is_reported_and_leaves_nothing(tmp_path, no_leaks):
    f = tmp_path / "file"
    f.write_text("")
    before = run_dirs()
    with pytest.raises(KernelError, match="mount: enter failed"):
        # a file cannot be bind-mounted over a directory (/etc): ENOTDIR
        spawn.run(["true"], container(mount.volume(str(f), "/etc")))
    assert run_dirs() - before == set()


def test_killed_container_is_released(no_leaks):
    prims = container()
    with spawn.spawn(["sleep", "30"], prims) as proc:
        upper_dir = prims[1].dir
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not os.path.exists(upper_dir)


def test_release_is_safe_twice():
    m = mount.MountNamespace(ROOTFS)
    m.prepare()
    assert os.path.isdir(m.dir)
    m.release()
    m.release()
    assert m.dir is None


# ---- the CLI ----------------------------------------------------------------------------

def test_cli_default_container_runs_in_the_busybox_rootfs(tmp_path, no_leaks):
    (tmp_path / "in").write_text("from the host\n")
    r = labkit_cli("run", "--volume", f"{tmp_path}:/data:ro", "--", "sh", "-c",
                   "cat /data/in; readlink /bin/sh; echo $$")
    assert (r.returncode, r.stdout, r.stderr) == (0, "from the host\n/bin/busybox\n1\n", "")


@pytest.mark.parametrize("argv,message", [
    (["--rootfs", "/no/such/labkit/rootfs"], "rootfs /no/such/labkit/rootfs does not exist"),
    (["--rootfs", "/etc/hostname"], "is not a directory"),
    (["--volume", "/no/such/labkit/path:/data"], "does not exist on the host"),
    (["--volume", "/etc:data"], "is not an absolute path"),
    (["--volume", "/etc:/x/../etc"], "contains '..'"),
    (["--volume", "/etc"], "malformed volume"),
    (["--ns", "pid,uts", "--rootfs", "/"], "need a mount namespace"),
])
def test_cli_bad_mount_input_is_one_clear_line(argv, message, no_leaks):
    before = run_dirs()
    r = labkit_cli("run", *argv, "--", "true")
    assert r.returncode == 125
    assert r.stderr.startswith("labkit: ") and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert run_dirs() - before == set()


def test_cli_rootfs_without_the_command(tmp_path, no_leaks):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = labkit_cli("run", "--rootfs", str(empty), "--", "sh", "-c", "true")
    assert r.returncode == 127
    assert r.stderr == "labkit: sh: command not found in the container: " \
        "check its name, and that it exists in the container's PATH\n"


def test_pid_namespace_that_mounts_proc_itself_still_composes(no_leaks):
    """PidNamespace(mount_proc=True) mounts /proc before the pivot; the mount
    primitive's fresh /proc in the new root is the one the command sees."""
    # `set -- /proc/[0-9]*` is the shell's own glob: no child of it is alive to count
    # (with `ls /proc | grep`, how many of the pipeline's processes exist yet is a race).
    r = spawn.run(["sh", "-c", "echo $$; set -- /proc/[0-9]*; echo $#; readlink /bin/sh"],
                  [pid.PidNamespace(), mount.MountNamespace(ROOTFS)])
    assert r.stdout.split() == ["1", "1", "/bin/busybox"], r.stdout + r.stderr


def test_mount_point_through_a_link_in_the_image_is_refused(tmp_path, no_leaks):
    """An image whose /data links to a host path must not make the volume's
    directories (or mounts) appear there: the path is refused with ELOOP."""
    image = tmp_path / "image"
    rootfs.build(str(image), progress=None)
    outside = tmp_path / "host-side"
    outside.mkdir()
    os.symlink(str(outside), image / "data")              # absolute: the host's path before pivot_root
    source = tmp_path / "vol"
    source.mkdir()
    prims = [pid.PidNamespace(mount_proc=False),
             mount.MountNamespace(str(image), [mount.volume(str(source), "/data/sub")])]
    with pytest.raises(KernelError, match="ELOOP: /data: a symbolic link"):
        spawn.run(["true"], prims)
    assert os.listdir(outside) == []


def test_without_overlay_the_container_writes_into_its_rootfs(tmp_path, no_leaks):
    image = rootfs.build(str(tmp_path / "image"), progress=None)
    r = spawn.run(["sh", "-c", "echo kept > /kept; ls -a / | grep -c oldroot"],
                  [pid.PidNamespace(mount_proc=False), mount.MountNamespace(image, overlay=False)])
    assert (r.returncode, r.stdout) == (1, "0\n"), r.stderr       # grep -c found none: exit 1
    assert open(f"{image}/kept").read() == "kept\n"
    assert not os.path.exists(image + mount.OLD_ROOT)
