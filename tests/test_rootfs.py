"""The busybox root filesystem builder and the tarball import's safety refusals."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from conftest import labkit_cli

from labkit import rootfs
from labkit.errors import UsageError


def tree(root: str) -> dict[str, tuple]:
    """Every path under ``root`` with its mode, size, link target and mtime."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else None
            found[os.path.relpath(path, root)] = (st.st_mode, st.st_size, link, st.st_mtime_ns)
    return found


def test_build_makes_a_busybox_rootfs(tmp_path):
    dest = str(tmp_path / "rootfs")
    assert rootfs.build(dest, progress=None) == dest
    assert os.path.getsize(dest + "/bin/busybox") == os.path.getsize(rootfs.BUSYBOX)
    assert os.readlink(dest + "/bin/sh") == "/bin/busybox"      # resolved inside the container
    for applet in rootfs.applets():
        assert os.path.islink(os.path.join(dest, applet)), applet
    with open(dest + "/etc/passwd") as f:
        assert f.readline().startswith("root:x:0:0:")
    for d in ("proc", "sys", "dev", "tmp", "run"):
        assert os.listdir(os.path.join(dest, d)) == []
    assert os.stat(dest + "/tmp").st_mode & 0o7777 == 0o1777
    assert rootfs.is_rootfs(dest)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]   # no build directory left


def test_build_is_idempotent(tmp_path):
    dest = str(tmp_path / "rootfs")
    rootfs.build(dest, progress=None)
    before = tree(dest)
    rootfs.build(dest, progress=None)
    assert tree(dest) == before


def test_build_completes_a_damaged_rootfs(tmp_path):
    dest = str(tmp_path / "rootfs")
    rootfs.build(dest, progress=None)
    os.unlink(dest + "/bin/ls")
    os.unlink(dest + "/etc/passwd")
    rootfs.build(dest, progress=None)
    assert os.readlink(dest + "/bin/ls") == "/bin/busybox"
    assert os.path.exists(dest + "/etc/passwd")


def test_cli_rootfs_build_then_run_in_it(tmp_path, no_leaks):
    dest = str(tmp_path / "r")
    r = labkit_cli("rootfs", "build", dest)
    assert (r.returncode, r.stdout) == (0, f"rootfs ready: {dest}\n"), r.stderr
    r = labkit_cli("run", "--rootfs", dest, "--", "sh", "-c", "ls /bin/busybox && echo in")
    assert (r.returncode, r.stdout) == (0, "/bin/busybox\nin\n"), r.stderr


def test_cli_rootfs_build_onto_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    r = labkit_cli("rootfs", "build", str(target))
    assert r.returncode == 125
    assert r.stderr.startswith("labkit: ") and "is not a directory" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# ---- tarball import ---------------------------------------------------------------------

def make_tar(path: str, entries: list[tarfile.TarInfo]) -> str:
    with tarfile.open(path, "w") as tar:
        for info in entries:
            data = b"hello\n" if info.isreg() else None
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


def test_import_of_a_docker_export_style_tarball(tmp_path, no_leaks):
    """A rootfs with absolute symlinks (as Alpine's) imports and runs."""
    built = rootfs.build(str(tmp_path / "built"), progress=None)
    tar_path = str(tmp_path / "rootfs.tar")
    with tarfile.open(tar_path, "w") as tar:
        tar.add(built, arcname=".")
    dest = str(tmp_path / "imported")
    r = labkit_cli("rootfs", "build", dest, "--from", tar_path)
    assert r.returncode == 0, r.stderr
    assert os.readlink(dest + "/bin/sh") == "/bin/busybox"
    r = labkit_cli("run", "--rootfs", dest, "--", "cat", "/etc/hostname")
    assert (r.returncode, r.stdout) == (0, "labkit\n"), r.stderr


UNSAFE = [
    ([entry("/etc/evil")], "absolute path"),
    ([entry("etc/../../evil")], "'..' in the path"),
    ([entry("dev/sda", tarfile.BLKTYPE)], "device node"),
    ([entry("dev/mem", tarfile.CHRTYPE)], "device node"),
    ([entry("etc/up", tarfile.SYMTYPE, "../../outside")], "outside the root"),
    ([entry("bin/x", tarfile.LNKTYPE, "/etc/shadow")], "hard link to /etc/shadow"),
    ([entry("escape", tarfile.SYMTYPE, "/"), entry("escape/labkit-written-through-link")],
     "goes through the link escape"),
]


@pytest.mark.parametrize("entries,reason", UNSAFE, ids=[r for _, r in UNSAFE])
def test_unsafe_tarball_is_refused_and_nothing_written(tmp_path, entries, reason, no_leaks):
    tar_path = make_tar(str(tmp_path / "bad.tar"), [entry("ok-first")] + entries)
    dest = str(tmp_path / "dest")
    r = labkit_cli("rootfs", "build", dest, "--from", tar_path)
    assert r.returncode == 125
    assert r.stderr.startswith("labkit: unsafe entry") and reason in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.tar"]        # nothing extracted, not even ok-first
    assert not os.path.exists("/labkit-written-through-link")


def test_relative_symlink_inside_the_root_is_accepted():
    links: set[str] = set()
    assert rootfs.unsafe_reason(entry("usr/bin/vi", tarfile.SYMTYPE, "../../bin/busybox"), links) is None
    assert rootfs.unsafe_reason(entry("usr/bin/vi", tarfile.SYMTYPE, "../../../bin/busybox"), links)


def test_import_refuses_a_non_empty_destination(tmp_path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_text("mine")
    tar_path = make_tar(str(tmp_path / "ok.tar"), [entry("a")])
    with pytest.raises(UsageError, match="not an empty directory"):
        rootfs.import_tarball(tar_path, str(tmp_path / "dest"), progress=None)
    assert (tmp_path / "dest" / "keep").read_text() == "mine"


def test_check_rootfs_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        rootfs.check_rootfs(str(tmp_path / "missing"))
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is not a directory"):
        rootfs.check_rootfs(str(tmp_path / "f"))
