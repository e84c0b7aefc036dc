"""Device control on cgroup v2: the BPF_PROG_TYPE_CGROUP_DEVICE program (devices.py, bpf.py).

The program is checked twice: its shape and its answers, by decoding the
bytes the kernel gets (a small interpreter below, for the opcodes of
bpf_common.h); then on the real kernel, attached to a group on a cgroup2
mount (/sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on the lab
VM), with a process inside opening device nodes. On a hybrid host the v1
devices controller checks opens too; this test process sits in the v1
devices root, which allows everything, and each test also runs once without
the program, so what refuses is the program.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import struct
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from labkit import bpf, cgroups, devices, spawn
from labkit.errors import LabkitError, UsageError

ROOT = os.geteuid() == 0
UNIFIED = cgroups.layout.read().v2_mount


# -- the program, decoded ---------------------------------------------------

def run_program(code: bytes, access: int, dev_type: int, major: int, minor: int) -> int:
    """What the program returns for one request, from its bytes: each 8-byte
    struct bpf_insn decoded (opcode, dst/src nibbles, off, imm) and executed."""
    ctx = struct.pack("=III", (access << 16) | dev_type, major, minor)
    regs, pc = [0] * 11, 0
    while True:
        op, regs_byte, off, imm = struct.unpack_from("=BBhi", code, 8 * pc)
        dst, src = regs_byte & 0xF, regs_byte >> 4
        pc += 1
        if op == 0x61:                                     # LDX | MEM | W from the context
            assert src == 1, "the program reads memory other than the context"
            regs[dst] = struct.unpack_from("=I", ctx, off)[0]
        elif op in (0xB7, 0xBF, 0x57, 0x77):               # ALU64 mov K/X, and K, rsh K
            value = regs[src] if op == 0xBF else imm & 0xFFFFFFFFFFFFFFFF
            regs[dst] = {0xB7: value, 0xBF: value, 0x57: regs[dst] & value, 0x77: regs[dst] >> value}[op]
        elif op in (0x55, 0x45):                           # JMP jne K, jset K
            if (regs[dst] != imm) if op == 0x55 else (regs[dst] & imm):
                pc += off
        elif op == 0x95:                                   # exit
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x} at {pc - 1}")


M, R, W = bpf.BPF_DEVCG_ACC_MKNOD, bpf.BPF_DEVCG_ACC_READ, bpf.BPF_DEVCG_ACC_WRITE
B, C = bpf.BPF_DEVCG_DEV_BLOCK, bpf.BPF_DEVCG_DEV_CHAR

# Requests and runc's default answers (devices(7) numbers: 1:3 null, 1:5 zero,
# 1:1 mem, 1:11 kmsg, 5:1 console, 4:1 tty1, 136:N pts, 8:0 sda, 253:0 vda).
EXPECTED = [
    (R | W, C, 1, 3, 1), (M, C, 1, 3, 1), (R, C, 1, 5, 1), (R | W, C, 1, 9, 1),
    (R | W, C, 5, 2, 1), (R | W, C, 136, 7, 1), (R | W, C, 136, 123456, 1),
    (M, B, 8, 0, 1), (M, C, 1, 1, 1), (M, B, 253, 0, 1),
    (R, B, 8, 0, 0), (W, B, 253, 0, 0), (R, C, 1, 1, 0), (R | W, C, 1, 11, 0),
    (R, C, 5, 1, 0), (R | W, C, 4, 1, 0), (R, C, 137, 3, 0), (R | M, B, 8, 0, 0),
    (R, B, 1, 3, 0),                                       # a block device with null's numbers
]


def test_the_program_from_allowed_answers_as_runcs_rules():
    code = b"".join(i.encode() for i in devices.instructions())
    for access, dev_type, major, minor, allowed in EXPECTED:
        assert run_program(code, access, dev_type, major, minor) == allowed, (access, dev_type, major, minor)


def test_the_program_has_one_block_per_rule_and_ends_in_deny():
    blocks = devices.program()
    assert [what for what, _ in blocks[1:-1]] == [f"rule {r}" for r in devices.ALLOWED]
    insns = devices.instructions()
    # Reads: only the context's three u32 fields (what cgroup_dev_is_valid_access allows).
    assert {(i.src, i.off) for i in insns if i.code == 0x61} == {(1, 0), (1, 4), (1, 8)}
    # Every test jumps forward to the start of the next block; each block but the first ends in exit.
    starts, pc = [], 0
    for _, block in blocks:
        starts.append(pc)
        pc += len(block)
    for n, (_, block) in enumerate(blocks[1:-1], start=1):
        for k, (insn, _) in enumerate(block[:-2]):
            assert starts[n] + k + 1 + insn.off == starts[n + 1]
        assert [i for i, _ in block[-2:]] == [bpf.alu64_imm(bpf.BPF_MOV, 0, 1), bpf.exit_insn()]
    assert [i for i, _ in blocks[-1][1]] == [bpf.alu64_imm(bpf.BPF_MOV, 0, 0), bpf.exit_insn()]


def test_a_rule_with_wildcards_or_all_access_skips_those_tests():
    # "a *:* rwm" matches everything: no test at all, the program allows at once.
    assert [i for i, _ in devices.program(("a *:* rwm",))[1][1]] == [
        bpf.alu64_imm(bpf.BPF_MOV, 0, 1), bpf.exit_insn()]
    code = b"".join(i.encode() for i in devices.instructions(("b 7:* r",)))
    assert run_program(code, R, B, 7, 42) == 1
    assert run_program(code, R | W, B, 7, 42) == 0 and run_program(code, R, C, 7, 42) == 0


def test_the_listing_is_the_disassembled_program_under_its_rules():
    lines = devices.listing()
    numbered = [line for line in lines if not line.startswith(";")]
    assert len(numbered) == len(devices.instructions())
    assert numbered[0].split("#")[0].strip() == "0: r2 = *(u32 *)(r1 + 0)"
    assert [line for line in lines if line.startswith("; rule")] == [f"; rule {r}" for r in devices.ALLOWED]
    at = lines.index("; rule c 1:3 rwm")
    assert "if r2 != 2 goto pc+4" in lines[at + 1] and "not a char device" in lines[at + 1]
    assert lines[-2].split("#")[0].strip().endswith("r0 = 0") and lines[-1].endswith("exit")


@pytest.mark.parametrize("rule", ["c 1:3", "x 1:3 r", "c 1:3 rx", "c a:3 r", "c 1 r", "c 1:3 ", "c 1:-1 r"])
def test_a_bad_rule_is_a_usage_error(rule):
    with pytest.raises(UsageError, match="bad device rule"):
        devices.DeviceProgram("/nonexistent", (rule,))


# -- the kernel's answers ----------------------------------------------------

needs_bpf = pytest.mark.skipif(not ROOT or UNIFIED is None,
                               reason="needs root and a cgroup2 mount (every platform labkit supports has one)")


@needs_bpf
def test_the_kernel_loads_the_program_as_a_cgroup_device_program():
    fd = devices.load(devices.instructions())
    try:
        info = bpf.fdinfo(fd)
        assert info["prog_type"] == str(bpf.BPF_PROG_TYPE_CGROUP_DEVICE)
        assert int(info.get("verified_insns", len(devices.instructions()))) >= len(devices.instructions())
    finally:
        os.close(fd)


@needs_bpf
@pytest.mark.parametrize("insns, reason", [
    ([bpf.load_u32(0, 1, 12), bpf.exit_insn()], "invalid bpf_context access off=12 size=4"),
    ([bpf.alu64_imm(bpf.BPF_MOV, 0, 2), bpf.exit_insn()], "At program exit the register R0 has"),
    ([bpf.alu64_imm(bpf.BPF_MOV, 0, 1)], "last insn is not an exit or jmp"),
])
def test_a_program_the_verifier_refuses_is_one_line_with_its_reason(insns, reason):
    with pytest.raises(LabkitError) as caught:
        devices.load(insns)
    message = str(caught.value)
    assert message.startswith("the kernel refused the device program: ")
    assert "\n" not in message and reason in message


@needs_bpf
def test_without_privilege_the_refusal_names_the_capability():
    # A child with empty capability sets asks the same kernel.
    script = textwrap.dedent("""
        from labkit import devices, kernel
        from labkit.errors import LabkitError
        kernel.capset(0, 0, 0)
        try:
            devices.load(devices.instructions())
        except LabkitError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.startswith("the kernel refused the device program: bpf(BPF_PROG_LOAD): "
                                 "Operation not permitted: "), out
    assert "CAP_SYS_ADMIN" in out.stdout and out.stdout.count("\n") == 1


@pytest.fixture
def v2_group():
    """A fresh group labkit/test-devices-* on the cgroup2 mount; removed after."""
    parent = os.path.join(UNIFIED, "labkit")
    made_parent = not os.path.isdir(parent)
    path = os.path.join(parent, f"test-devices-{os.getpid()}-{secrets.token_hex(3)}")
    os.makedirs(path)
    try:
        yield path
    finally:
        cgroups.v2.kill(path)
        cgroups.v2.rmdir(path, timeout=5)
        if made_parent:
            try:
                os.rmdir(parent)
            except OSError:
                pass                           # another test's group is in it


def node_dir() -> str | None:
    """A temporary directory's parent where device nodes work: its mount is not
    nodev (Debian 13 mounts /tmp as tmpfs with nodev; /var/tmp is on /)."""
    for d in (tempfile.gettempdir(), "/var/tmp"):
        if os.path.isdir(d) and not os.statvfs(d).f_flag & os.ST_NODEV:
            return d
    return None


def openable_disk(directory: str) -> tuple[int, int] | None:
    """(major, minor) of a host disk this process can open through a node made in
    ``directory``: the disk holding / first, else any in /sys/block (a sandboxed
    host may refuse some of its disks to everyone)."""
    first = tuple(map(int, cgroups.block_device("/").split(":")))
    others = []
    for name in sorted(os.listdir("/sys/block")):
        with open(f"/sys/block/{name}/dev") as f:
            others.append(tuple(map(int, f.read().split(":"))))
    for major, minor in [first, *others]:
        path = os.path.join(directory, "probe")
        os.mknod(path, 0o060600, os.makedev(major, minor))
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            return major, minor
        except OSError:
            continue
        finally:
            os.unlink(path)
    return None


@pytest.fixture
def nodes():
    """Device nodes made in a temporary directory (a node is only its numbers)."""
    if node_dir() is None:
        pytest.skip("no temporary directory on a filesystem without nodev")
    with tempfile.TemporaryDirectory(dir=node_dir()) as d:
        disk = openable_disk(d)
        if disk is None:
            pytest.skip("the host itself can open none of its disks")
        table = {"null": ("c", 1, 3), "zero": ("c", 1, 5), "mem": ("c", 1, 1), "kmsg": ("c", 1, 11),
                 "disk": ("b", *disk)}
        for name, (kind, ma, mi) in table.items():
            mode = 0o600 | (0o020000 if kind == "c" else 0o060000)
            os.mknod(os.path.join(d, name), mode, os.makedev(ma, mi))
        yield d, table


PROBE = textwrap.dedent("""
    import errno, json, os, sys
    group, nodes = sys.argv[1], sys.argv[2]
    if group:
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write("0")                       # cgroups(7): 0 moves the writer
    result = {}
    for name in sorted(os.listdir(nodes)):
        try:
            os.close(os.open(os.path.join(nodes, name), os.O_RDONLY | os.O_CLOEXEC))
            result["open " + name] = "ok"
        except OSError as e:
            result["open " + name] = errno.errorcode[e.errno]
    for name, mode, dev in (("mknod b", 0o060600, os.stat(os.path.join(nodes, "disk")).st_rdev),
                            ("mknod c", 0o020600, os.makedev(1, 1))):
        path = os.path.join(nodes, name.replace(" ", "-"))
        try:
            os.mknod(path, mode, dev)
            os.unlink(path)
            result[name] = "ok"
        except OSError as e:
            result[name] = errno.errorcode[e.errno]
    try:
        parent, child = os.openpty()           # /dev/ptmx (5:2), then /dev/pts/N (136:N)
        result["openpty"] = "ok"
    except OSError as e:
        result["openpty"] = errno.errorcode[e.errno]
    print(json.dumps(result))
""")


def probe(group: str, nodes_dir: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, group, nodes_dir],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def bpf_prog_fds() -> set[str]:
    """Our own fds that are BPF programs (readlink shows anon_inode:bpf-prog)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-prog":
                found.add(fd)
        except OSError:
            pass
    return found


def wait_freed(prog_id: int, timeout: float = 5.0) -> bool:
    """True once the kernel has freed program ``prog_id`` (BPF_PROG_GET_FD_BY_ID: ENOENT).
    A removed group releases its programs from a workqueue, so this may take a moment."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.close(bpf.prog_fd_by_id(prog_id))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return True
            raise
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@needs_bpf
def test_in_the_group_the_program_allows_runcs_devices_and_refuses_a_host_disk(v2_group, nodes):
    nodes_dir, _ = nodes
    # Without the program: the same process in the same group opens everything.
    before = probe(v2_group, nodes_dir)
    assert before["open disk"] == before["open kmsg"] == before["open null"] == "ok", before
    held = bpf_prog_fds()
    prim = devices.DeviceProgram(v2_group)
    prim.prepare()
    assert bpf_prog_fds() == held                      # the fd was closed: the attachment holds it
    assert devices.attached(v2_group) == (bpf.BPF_F_ALLOW_MULTI, [prim.prog_id])
    after = probe(v2_group, nodes_dir)
    assert after["open null"] == after["open zero"] == after["openpty"] == "ok", after
    assert after["open disk"] == after["open kmsg"] == "EPERM", after
    if before["open mem"] == "ok":                     # /dev/mem may be off in the kernel's config
        assert after["open mem"] == "EPERM", after
    assert after["mknod b"] == after["mknod c"] == "ok", after   # mknod of any node: "c *:* m", "b *:* m"
    # A process outside the group is not concerned.
    assert probe("", nodes_dir)["open disk"] == "ok"
    # Removing the group releases the program: nothing of it is left.
    prim.release()
    cgroups.v2.rmdir(v2_group, timeout=5)
    assert wait_freed(prim.prog_id), f"program {prim.prog_id} still loaded after its group went"


class _V2Group(spawn.Primitive):
    """A bare v2 group that PID 1 joins (what cgroups.Cgroup does on pure v2)."""

    name = "test-v2-group"

    def __init__(self, path: str) -> None:
        self.path, self.fd = path, -1

    def prepare(self) -> None:
        self.fd = cgroups.open_self_move(self.path)

    def enter(self) -> None:
        os.write(self.fd, b"0")

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@needs_bpf
def test_a_process_started_through_the_pipeline_meets_the_program(v2_group, nodes):
    """DeviceProgram as the container uses it: after the group's primitive, before PID 1 joins."""
    nodes_dir, table = nodes
    kind, major, minor = table["disk"]
    prims = [_V2Group(v2_group), devices.DeviceProgram(v2_group)]
    script = (f"mknod {nodes_dir}/d2 b {major} {minor}; echo mknod=$?; "
              f"dd if={nodes_dir}/d2 of=/dev/null bs=512 count=1 2>&1; echo dd=$?")
    held = bpf_prog_fds()
    proc = spawn.spawn(["/bin/sh", "-c", script], prims, capture=True)
    with proc:
        assert proc.wait(30) is not None
    assert "mknod=0" in proc.stdout, proc.stdout
    assert "Operation not permitted" in proc.stdout and "dd=1" in proc.stdout, proc.stdout
    assert devices.attached(v2_group)[1] == [prims[1].prog_id]
    assert bpf_prog_fds() == held
    # Detached by hand (BPF_PROG_DETACH names the program: the group allows several,
    # BPF_F_ALLOW_MULTI), it has no holder left and the kernel frees it.
    prog_fd = bpf.prog_fd_by_id(prims[1].prog_id)
    group_fd = os.open(v2_group, os.O_RDONLY | os.O_DIRECTORY)
    try:
        bpf.prog_detach(group_fd, prog_fd, bpf.BPF_CGROUP_DEVICE)
    finally:
        os.close(group_fd)
        os.close(prog_fd)
    assert devices.attached(v2_group)[1] == []
    assert wait_freed(prims[1].prog_id)
