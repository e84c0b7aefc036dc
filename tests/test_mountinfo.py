"""labkit.mountinfo, the one reader of /proc/PID/mountinfo: documented lines,
escapes, and a real mount whose path needs every escape the kernel makes."""

from __future__ import annotations

import os
import subprocess
import tempfile

from labkit import mountinfo

# proc(5)'s own example line, and lines as this project's hosts show them.
PROC5 = "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 master:2 - cgroup2 cgroup2 rw
"""


def test_the_proc5_example():
    e = mountinfo.parse_line(PROC5)
    assert (e.mount_id, e.parent_id, e.devno, e.root, e.mount_point) == (36, 35, "98:0", "/mnt1", "/mnt/parent")
    assert (e.options, e.propagation, e.fstype, e.source) == ("rw,noatime", "master:1", "ext3", "/dev/root")
    assert e.super_option_list() == ["rw", "errors=continue"]


def test_optional_fields_vary_in_number():
    entries = mountinfo.parse(HYBRID)
    assert [e.propagation for e in entries] == ["private", "shared:9", "shared:5 master:2"]
    assert [e.fstype for e in entries] == ["tmpfs", "cgroup", "cgroup2"]
    assert entries[1].super_options == "rw,cpu"


def test_octal_escapes_are_decoded():
    line = r"50 23 0:50 /a\134b /mnt/my\040disk\011tab\012nl rw - tmpfs my\040src rw"
    e = mountinfo.parse_line(line)
    assert e.root == "/a\\b"
    assert e.mount_point == "/mnt/my disk\ttab\nnl"
    assert e.source == "my src"
    assert mountinfo.unescape(r"no\escape") == r"no\escape"      # only \NNN is an escape


def test_under_is_deepest_first_and_exact():
    entries = mountinfo.parse(HYBRID)
    points = mountinfo.under(entries, "/sys/fs/cgroup")
    assert set(points[:2]) == {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"}
    assert points[2:] == ["/sys/fs/cgroup"]
    assert mountinfo.under(entries, "/sys/fs/cgroup/cp") == []        # a prefix of a name is not "under"
    assert mountinfo.mount_points(entries, "cgroup2") == ["/sys/fs/cgroup/unified"]


def test_a_real_mount_whose_path_needs_escapes():
    """The kernel escapes space, tab, newline and backslash in mountinfo
    (fs/proc_namespace.c); a tmpfs mounted at such a path, in a private mount
    namespace (unshare(1)), reads back as the path itself."""
    with tempfile.TemporaryDirectory() as tmp:
        point = os.path.join(tmp, "a b\tc\\d\ne")
        os.mkdir(point)
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              'mount -t tmpfs "lab src" "$1" && cat /proc/self/mountinfo', "sh", point],
                             capture_output=True, text=True, check=True).stdout
        assert "a\\040b\\011c\\134d\\012e" in out                  # what the kernel wrote
        found = [e for e in mountinfo.parse(out) if e.mount_point == point]
        assert len(found) == 1 and found[0].source == "lab src" and found[0].fstype == "tmpfs"
        assert point not in [e.mount_point for e in mountinfo.read()]   # it stayed in that namespace
