"""eBPF from Python: the bpf(2) syscall through ctypes, and the instructions.

Python has no binding for bpf(2), so this is the smallest one labkit needs:
load a program (BPF_PROG_LOAD), attach it to a cgroup, detach it, ask which
programs a cgroup has (BPF_PROG_QUERY), and turn an id back into an fd.
Names and numbers are those of include/uapi/linux/bpf.h and bpf_common.h.

bpf(2): ``int bpf(int cmd, union bpf_attr *attr, unsigned int size)``; each
command reads its own struct of the union. The kernel accepts a ``size``
smaller than its union (the rest counts as zero) and refuses non-zero bytes it
does not know (bpf_check_uarg_tail_zero, kernel/bpf/syscall.c), so each struct
below stops at the last field labkit sets and works on 6.1 and on newer kernels.

An instruction (``struct bpf_insn``) is 8 bytes: opcode, destination and
source register (4 bits each), a signed 16-bit offset, a signed 32-bit
immediate. Registers r0-r10: r1 holds the context on entry, r0 the return
value at ``exit``. Documentation/bpf/standardization/instruction-set.rst.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import NamedTuple

from . import kernel

# enum bpf_cmd
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
# enum bpf_prog_type, enum bpf_attach_type
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
# cgroup attach flags (see devices.DeviceProgram for the choice)
BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1
BPF_OBJ_NAME_LEN = 16
# struct bpf_cgroup_dev_ctx's access_type: (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*
BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE = 1, 2, 4
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2

# Instruction classes, sizes, modes, operations, sources (bpf_common.h, bpf.h).
BPF_LDX, BPF_ALU, BPF_JMP, BPF_ALU64 = 0x01, 0x04, 0x05, 0x07
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
BPF_MEM = 0x60
BPF_AND, BPF_RSH, BPF_MOV = 0x50, 0x70, 0xB0
BPF_JEQ, BPF_JSET, BPF_JNE, BPF_EXIT = 0x10, 0x40, 0x50, 0x90
BPF_K, BPF_X = 0x00, 0x08

_SIZE_NAMES = {BPF_W: "u32", BPF_H: "u16", BPF_B: "u8", BPF_DW: "u64"}
_ALU_SIGNS = {BPF_AND: "&=", BPF_RSH: ">>=", BPF_MOV: "="}
_JMP_SIGNS = {BPF_JEQ: "==", BPF_JSET: "&", BPF_JNE: "!="}


class Insn(NamedTuple):
    """One ``struct bpf_insn``."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        # dst_reg is the low nibble of the second byte on a little-endian host.
        return struct.pack("=BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)


def load_u32(dst: int, src: int, off: int) -> Insn:
    """``dst = *(u32 *)(src + off)``"""
    return Insn(BPF_LDX | BPF_MEM | BPF_W, dst, src, off)


def alu64_imm(op: int, dst: int, imm: int) -> Insn:
    """``dst op= imm`` on 64 bits (BPF_MOV: ``dst = imm``)."""
    return Insn(BPF_ALU64 | op | BPF_K, dst, 0, 0, imm)


def mov64_reg(dst: int, src: int) -> Insn:
    """``dst = src``"""
    return Insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src)


def jump_imm(op: int, dst: int, imm: int, off: int) -> Insn:
    """``if dst op imm goto +off`` (off counts instructions after this one)."""
    return Insn(BPF_JMP | op | BPF_K, dst, 0, off, imm)


def exit_insn() -> Insn:
    """``exit``: return r0."""
    return Insn(BPF_JMP | BPF_EXIT)


def disassemble(insn: Insn, pc: int) -> str:
    """One instruction in the kernel verifier's notation (kernel/bpf/disasm.c),
    for the opcodes this module builds; a jump also names its target."""
    cls, op = insn.code & 0x07, insn.code & 0xF0
    if insn.code == BPF_JMP | BPF_EXIT:
        return "exit"
    if cls == BPF_LDX and insn.code & 0xE0 == BPF_MEM:
        return f"r{insn.dst} = *({_SIZE_NAMES[insn.code & 0x18]} *)(r{insn.src} + {insn.off})"
    if cls == BPF_ALU64 and op in _ALU_SIGNS:
        value = f"r{insn.src}" if insn.code & BPF_X else (hex(insn.imm) if op == BPF_AND else str(insn.imm))
        return f"r{insn.dst} {_ALU_SIGNS[op]} {value}"
    if cls == BPF_JMP and op in _JMP_SIGNS and not insn.code & BPF_X:
        value = hex(insn.imm) if op == BPF_JSET else str(insn.imm)
        return f"if r{insn.dst} {_JMP_SIGNS[op]} {value} goto pc+{insn.off}  (-> {pc + 1 + insn.off})"
    return f"(code {insn.code:#04x})"


# -- the syscall -----------------------------------------------------------

class _ProgLoad(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32)]


class _ProgAttach(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32)]


class _ProgQuery(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32)]


class _ProgId(ctypes.Structure):
    _fields_ = [("prog_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


_CMD_NAMES = {BPF_PROG_LOAD: "BPF_PROG_LOAD", BPF_PROG_ATTACH: "BPF_PROG_ATTACH",
              BPF_PROG_DETACH: "BPF_PROG_DETACH", BPF_PROG_GET_FD_BY_ID: "BPF_PROG_GET_FD_BY_ID",
              BPF_PROG_QUERY: "BPF_PROG_QUERY"}


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(2) with ``attr``; OSError(errno, "bpf(CMD): why") when it returns -1."""
    try:
        return kernel.syscall("bpf", ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
    except OSError as e:
        raise OSError(e.errno, f"bpf({_CMD_NAMES.get(cmd, cmd)}): {os.strerror(e.errno or 0)}") from None


class VerifierError(OSError):
    """BPF_PROG_LOAD refused the program; ``log`` is the verifier's log, and
    ``reason`` its last line before the statistics ("processed N insns ...")."""

    def __init__(self, err: int, log: str) -> None:
        self.log = log
        lines = [line for line in log.splitlines()
                 if line.strip() and not line.startswith(("processed ", "verification time"))]
        self.reason = lines[-1] if lines else ""
        why = f": {self.reason}" if self.reason else ""
        super().__init__(err, f"bpf(BPF_PROG_LOAD): {os.strerror(err)}{why}")


def prog_load(prog_type: int, insns: list[Insn], *, name: str = "", license: str = "",
              expected_attach_type: int = 0, log_size: int = 1 << 16) -> int:
    """Load a program; return its fd (close-on-exec, as every bpf(2) fd).

    The verifier (kernel/bpf/verifier.c) walks every path first: each must end
    in ``exit`` with r0 in the range the program type allows, read only what
    the type's ``is_valid_access`` permits, and jump only inside the program.
    The first attempt asks for no log (log_level 0); on a refusal it loads again
    with log_level 1 and raises VerifierError with the log's last line, which
    is where the verifier stopped. ``license`` matters only for helpers marked
    gpl_only; a program that calls none may give any string.
    """
    code = b"".join(i.encode() for i in insns)
    code_buf = ctypes.create_string_buffer(code, len(code))
    license_buf = ctypes.create_string_buffer(license.encode())
    attr = _ProgLoad(prog_type=prog_type, insn_cnt=len(insns),
                     insns=ctypes.addressof(code_buf), license=ctypes.addressof(license_buf),
                     prog_name=name.encode()[:BPF_OBJ_NAME_LEN - 1],
                     expected_attach_type=expected_attach_type)
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError as first:
        if first.errno not in (errno.EINVAL, errno.EACCES):   # the verifier's answers
            raise
    log = ctypes.create_string_buffer(log_size)
    attr.log_level, attr.log_size, attr.log_buf = 1, log_size, ctypes.addressof(log)
    try:
        return bpf(BPF_PROG_LOAD, attr)                       # a second try may pass: then use it
    except OSError as e:
        raise VerifierError(e.errno, log.value.decode(errors="replace")) from None


def prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """Attach program ``prog_fd`` to the cgroup open at ``target_fd``."""
    bpf(BPF_PROG_ATTACH, _ProgAttach(target_fd, prog_fd, attach_type, flags))


def prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    """Detach program ``prog_fd`` from the cgroup open at ``target_fd``."""
    bpf(BPF_PROG_DETACH, _ProgAttach(target_fd, prog_fd, attach_type, 0))


def prog_query(target_fd: int, attach_type: int, max_progs: int = 64) -> tuple[int, list[int]]:
    """(attach flags, ids of the programs attached to the cgroup itself, in run order)."""
    ids = (ctypes.c_uint32 * max_progs)()
    attr = _ProgQuery(target_fd=target_fd, attach_type=attach_type,
                      prog_ids=ctypes.addressof(ids), prog_cnt=max_progs)
    bpf(BPF_PROG_QUERY, attr)
    return attr.attach_flags, list(ids[:attr.prog_cnt])


def prog_fd_by_id(prog_id: int) -> int:
    """An fd for the loaded program ``prog_id``; OSError ENOENT once it is freed."""
    return bpf(BPF_PROG_GET_FD_BY_ID, _ProgId(prog_id=prog_id))


def fdinfo(fd: int) -> dict[str, str]:
    """/proc/self/fdinfo/FD of a program fd: prog_type, prog_tag, prog_id, ..."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
