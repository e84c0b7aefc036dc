"""seccomp.Seccomp.from_profile: a Docker-format profile, compiled by libseccomp,
installed in a real container, seen denying in the kernel's trace."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys

import pytest

from labkit import caps, pid, seccomp, spawn, trace
from labkit.errors import UsageError

PROFILE = os.path.join(os.path.dirname(__file__), "data", "seccomp-deny-uname.json")

# Each call made in the container, its return value and errno (0 when it worked).
PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    ret = getattr(libc, name)(*args)
    return f"{name}={ret},{ctypes.get_errno() if ret == -1 else 0}"
buf = ctypes.create_string_buffer(390 * 6)
print(call("uname", buf), call("mkdir", b"/tmp/labkit-seccomp-probe", 0o700),
      call("personality", 8), call("personality", 0xffffffff), call("getpid"))
"""


def probe(*prims: spawn.Primitive) -> dict[str, tuple[int, int]]:
    result = spawn.run([sys.executable, "-c", PROBE], [pid.PidNamespace(), *prims], timeout=30)
    assert result.returncode == 0, result.stderr
    found = {}
    for word in result.stdout.split():
        name, _, value = word.partition("=")
        ret, err = value.split(",")
        found.setdefault(name, []).append((int(ret), int(err)))
    return found


def test_the_profile_denies_its_calls_with_its_errnos_and_allows_the_rest(no_leaks):
    """uname fails with EPERM and mkdir with ENOSYS without running (the
    directory is not made); personality fails only with the argument the rule
    compares; getpid, under the default SCMP_ACT_ALLOW, works. Without the
    filter, the same calls work: the denials are the profile's."""
    made = "/tmp/labkit-seccomp-probe"
    assert not os.path.exists(made)
    filt = seccomp.Seccomp.from_profile(PROFILE)
    assert filt.skipped == ("statmount_not_a_call_xyz",)
    denied = probe(caps.Capabilities(), filt)
    assert denied["uname"] == [(-1, errno.EPERM)]
    assert denied["mkdir"] == [(-1, errno.ENOSYS)] and not os.path.exists(made)
    assert denied["personality"][0] == (-1, errno.EPERM)          # personality(UNAME26): the rule's argument
    assert denied["personality"][1][1] == 0                       # personality(0xffffffff): a query, allowed
    assert denied["getpid"][0][1] == 0

    free = probe(caps.Capabilities())
    try:
        assert free["uname"] == [(0, 0)] and free["mkdir"] == [(0, 0)] and free["personality"][0][1] == 0
    finally:
        if os.path.isdir(made):
            os.rmdir(made)


def test_the_trace_names_the_profiles_rule_of_a_denial(no_leaks):
    """The filter answers before the sys_enter tracepoint: uname's record is a
    sys_exit alone, matched to the profile's rule: observed."""
    filt = seccomp.Seccomp.from_profile(PROFILE)
    tr = trace.Trace(seccomp_filter=filt)
    program = "import os\ntry:\n    os.uname()\nexcept OSError:\n    pass"
    with spawn.spawn([sys.executable, "-c", program], [pid.PidNamespace(), caps.Capabilities(), filt, tr]) as proc:
        assert proc.wait() == 0
    [rec] = [r for r in tr.command_records() if r.syscall == "uname"]
    assert rec.errno == "EPERM" and rec.args == [trace.CHILD_RETURN]
    assert (rec.deciding, rec.evidence, rec.basis) == ("seccomp", trace.OBSERVED,
                                                       "seccomp: uname -> SCMP_ACT_ERRNO(EPERM)")


def test_a_default_errno_profile_names_its_default_action(tmp_path):
    """An allow-list (defaultAction ERRNO): a call no rule allows is answered by the default."""
    path = tmp_path / "allowlist.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.ENOSYS,
                                "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}))
    filt = seccomp.Seccomp.from_profile(str(path))
    assert filt.default == ("SCMP_ACT_ERRNO", errno.ENOSYS)
    assert filt.explain("keyctl", -errno.ENOSYS) == "keyctl: no rule matches, defaultAction SCMP_ACT_ERRNO(ENOSYS)"
    assert filt.explain("read", -errno.ENOSYS) == ""


def test_includes_and_excludes_follow_the_containers_capabilities_and_the_kernel(tmp_path):
    path = tmp_path / "conditional.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_CHROOT"]}},
        {"names": ["acct"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "99.0"}},
        {"names": ["sync"], "action": "SCMP_ACT_ERRNO", "includes": {"arches": ["s390x"]}},
        {"names": ["syncfs"], "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "3.0"}},
    ]}))
    assert [r.syscall for r in seccomp.Seccomp.from_profile(str(path)).rules] == []   # Docker's 14 keep SYS_CHROOT
    assert [r.syscall for r in seccomp.Seccomp.from_profile(str(path), caps=[]).rules] == ["chroot"]


@pytest.mark.parametrize("content, field", [
    ("{not json", "not JSON"),
    ('{"syscalls": []}', "defaultAction: missing"),
    ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "defaultAction: SCMP_ACT_NOTIFY is not supported"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}', "flags: not supported"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "colour": 1}', "colour: not a field"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_DENY"}]}',
     "syscalls[0].action: unknown action"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_KILL",'
     ' "errnoRet": 1}]}', "syscalls[0].errnoRet: SCMP_ACT_KILL returns no errno"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO",'
     ' "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "syscalls[0].args[0].index"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO",'
     ' "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}', "syscalls[0].args[0].op"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}', "architectures: unknown"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}', "syscalls[0].names"),
])
def test_a_bad_profile_is_one_usage_error_naming_the_field(tmp_path, content, field):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UsageError) as refused:
        seccomp.Seccomp.from_profile(str(path))
    assert field in str(refused.value) and "\n" not in str(refused.value)


def test_a_missing_profile_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="No such file"):
        seccomp.Seccomp.from_profile(str(tmp_path / "none.json"))


def test_a_kill_action_ends_the_process_with_sigsys(tmp_path, no_leaks):
    """SCMP_ACT_KILL_PROCESS: seccomp(2) SECCOMP_RET_KILL_PROCESS ends the whole
    process as if by SIGSYS, without running the call."""
    path = tmp_path / "kill.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                                "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_KILL_PROCESS"}]}))
    program = "import os, sys\nprint('before', flush=True)\nos.uname()\nprint('after')"
    result = spawn.run([sys.executable, "-c", program],
                       [pid.PidNamespace(), caps.Capabilities(), seccomp.Seccomp.from_profile(str(path))], timeout=30)
    assert (result.returncode, result.stdout) == (-signal.SIGSYS, "before\n")
