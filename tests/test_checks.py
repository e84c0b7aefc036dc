"""labkit.checks: the table of the kernel's check order, and the running kernel held to it.

The kernel tests make two (or three) checks of one call fail at once, in a
container made with labkit's primitives, and compare the errno the kernel
answers with the one ``checks.order()`` predicts: the errno of the FIRST
listed check among those made to fail. The same call with one cause removed
(a capability given) is the control: the next check then answers.
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from labkit import caps, checks, net, pid, rootfs, seccomp, trace, uts
from labkit.cgroups import Cgroup
from labkit.spawn import spawn
from labkit.syscalls import syscall_number

KERNEL_SOURCE = re.compile(r"\b(kernel|fs|mm|net|security|arch|include|ipc)/[\w/.-]+\.[ch]\b")


# --- the table (no kernel) ------------------------------------------------------

def test_every_check_is_of_a_known_kind_and_every_kind_is_used():
    used = {c.kind for o in checks.ORDER.values() for c in o}
    assert used <= set(checks.KINDS) and used == set(checks.KINDS)
    assert set(checks.ORDER) == set(checks.FAMILIES)


def test_seccomp_is_first_for_every_call_listed_or_not():
    for f, o in checks.ORDER.items():
        assert o[0] is checks.SECCOMP, f
        assert sum(c.kind == "seccomp" for c in o) == 1, f
    assert checks.order("read") == (checks.SECCOMP, checks.EXECUTE)
    assert checks.family("read") is None


def test_every_syscall_of_a_family_has_a_number():
    for f, names in checks.FAMILIES.items():
        for name in names:                          # x86_64 has them all (open, fork...)
            assert syscall_number(name, "x86_64") > 0, name
            assert checks.family(name) == f
        assert any(_number(n, "aarch64") for n in names), f     # aarch64: at least one a family


def _number(name: str, machine: str) -> int | None:
    try:
        return syscall_number(name, machine)
    except KeyError:
        return None


def test_every_source_names_a_kernel_file_and_every_errno_is_real():
    import errno
    for o in checks.ORDER.values():
        for c in o:
            assert KERNEL_SOURCE.search(c.source), c.source
            assert c.what and "\n" not in c.what
            assert all(hasattr(errno, e) for e in c.denies_with), c.denies_with
    for q in checks.NON_DECIDING:
        assert KERNEL_SOURCE.search(q.source) and q.capability.startswith("CAP_") and q.why


def test_labkits_seccomp_denials_are_decided_before_anything_the_call_checks():
    for name in ("keyctl", "mount", "unshare", "setns"):
        assert name in seccomp.DENIED and checks.order(name)[0].kind == "seccomp"


def test_quiet_explains_overcommit_but_never_a_check_the_call_itself_makes():
    assert "overcommit" in checks.quiet("mmap", "CAP_SYS_ADMIN").why
    assert checks.quiet("sethostname", "CAP_SYS_ADMIN") is None       # it decides sethostname
    assert checks.quiet("mount", "CAP_SYS_ADMIN") is None
    assert checks.quiet("openat", "CAP_SYS_ADMIN", granted=True).why.startswith("overlayfs")
    assert checks.quiet("mmap", "CAP_KILL") is None


# --- the kernel held to the table --------------------------------------------------

PRELUDE = """
import errno, json, os, signal, socket
from labkit import kernel
def attempt(fn, *args):
    try:
        fn(*args)
        return "OK"
    except OSError as e:
        return errno.errorcode[e.errno]
out = {}
"""


def probe(code: str, *prims) -> dict[str, str]:
    """Run ``code`` (after PRELUDE) as a container's command; return its ``out``."""
    with spawn([sys.executable, "-c", PRELUDE + code + "\nprint(json.dumps(out))"], list(prims)) as p:
        code_ = p.wait(60)
    assert code_ == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def first(syscall: str, *failing: tuple[str, str]) -> str:
    """The errno the table predicts when the checks ``failing`` ((kind, errno) pairs)
    all say no: that of the first check in ``checks.order(syscall)`` among them."""
    for check in checks.order(syscall):
        for kind, err in failing:
            if check.kind == kind and err in check.denies_with:
                return err
    raise AssertionError(f"no check of {syscall} answers any of {failing}")


def keep(*names: str) -> caps.Capabilities:
    return caps.Capabilities(keep=names)


def test_sethostname_checks_the_capability_before_the_names_length(no_leaks):
    code = 'out["long"] = attempt(kernel.sethostname, "x" * 65)'
    without = probe(code, uts.UtsNamespace(), keep())
    with_ = probe(code, uts.UtsNamespace(), keep("CAP_SYS_ADMIN"))
    assert without["long"] == first("sethostname", ("capability", "EPERM"), ("execute", "EINVAL")) == "EPERM"
    assert with_["long"] == first("sethostname", ("execute", "EINVAL")) == "EINVAL"


def test_mount_looks_up_the_target_then_checks_the_capability_then_the_source(no_leaks):
    code = """
out["missing source"] = attempt(kernel.mount, "/no/such/labkit/src", "/tmp", None, kernel.MS_BIND)
out["missing target"] = attempt(kernel.mount, "/no/such/labkit/src", "/no/such/labkit/dst", None, kernel.MS_BIND)
"""
    without = probe(code, pid.PidNamespace(), keep())      # its own mount namespace: nothing leaks
    with_ = probe(code, pid.PidNamespace(), keep("CAP_SYS_ADMIN"))
    # The target exists: only the capability and the source's lookup fail.
    source_lookup = [c for c in checks.order("mount") if c.kind == "namespace"][-1]
    capability = next(c for c in checks.order("mount") if c.kind == "capability")
    assert checks.order("mount").index(capability) < checks.order("mount").index(source_lookup)
    assert without["missing source"] == capability.denies_with[0] == "EPERM"
    assert with_["missing source"] == "ENOENT" and "ENOENT" in source_lookup.denies_with
    # Both lookups and the capability fail: the target's lookup comes first.
    assert without["missing target"] == first("mount", ("namespace", "ENOENT"), ("capability", "EPERM")) \
        == "ENOENT"


def test_kill_looks_the_pid_up_in_the_callers_namespace_before_any_permission(no_leaks):
    host_pid = os.getpid()                  # exists on the host, not in the container's PID namespace
    code = f"""
child = os.fork()
if child == 0:
    signal.pause()
assert not os.path.exists("/proc/{host_pid}")       # the container's /proc shows its namespace
os.setresuid(65534, 65534, 65534)                    # not the child's uid; a nonzero uid clears all capabilities
out["host pid"] = attempt(os.kill, {host_pid}, 0)
out["host pid, bad signal"] = attempt(os.kill, {host_pid}, 999)
out["root's child"] = attempt(os.kill, child, 0)
"""
    got = probe(code, pid.PidNamespace(), keep("CAP_SETUID"))
    assert got["host pid"] == first("kill", ("namespace", "ESRCH"), ("permission", "EPERM"),
                                    ("capability", "EPERM")) == "ESRCH"
    assert got["host pid, bad signal"] == first("kill", ("namespace", "ESRCH"), ("execute", "EINVAL"),
                                                ("capability", "EPERM")) == "ESRCH"
    assert got["root's child"] == first("kill", ("capability", "EPERM")) == "EPERM"


def test_bind_checks_cap_net_bind_service_before_the_port_table(no_leaks):
    code = """
assert int(open("/proc/sys/net/ipv4/ip_unprivileged_port_start").read()) > 80
a = socket.socket(); a.bind(("0.0.0.0", 80))
out["in use, with the capability"] = attempt(socket.socket().bind, ("0.0.0.0", 80))
kernel.capset(0, 0, 0)
out["in use, without"] = attempt(socket.socket().bind, ("0.0.0.0", 80))
"""
    got = probe(code, net.NetNamespace(), keep("CAP_NET_BIND_SERVICE"))
    assert got["in use, with the capability"] == first("bind", ("namespace", "EADDRINUSE")) == "EADDRINUSE"
    assert got["in use, without"] == first("bind", ("capability", "EACCES"),
                                           ("namespace", "EADDRINUSE")) == "EACCES"


def test_open_checks_search_permission_before_looking_the_name_up(no_leaks, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    os.chown(locked, 65534, 65534)          # root in the container is not its owner
    code = f'out["missing"] = attempt(os.open, "{locked}/missing", os.O_RDONLY)'
    without = probe(code, keep())           # no CAP_DAC_READ_SEARCH, no CAP_DAC_OVERRIDE
    with_ = probe(code, keep("CAP_DAC_READ_SEARCH"))
    assert without["missing"] == first("openat", ("permission", "EACCES"), ("namespace", "ENOENT")) == "EACCES"
    assert with_["missing"] == first("openat", ("namespace", "ENOENT")) == "ENOENT"


def test_fork_checks_the_namespace_capability_before_the_pids_limit(no_leaks):
    # clone's number is looked up here: the program cannot load libseccomp under pids.max 1
    # (pyseccomp finds the library with ldconfig, a child process).
    code = f"""
import ctypes
def clone(flags):
    child = kernel._check(ctypes.CDLL(None, use_errno=True).syscall(
        {syscall_number("clone")}, flags | signal.SIGCHLD, 0, 0, 0, 0), "clone")
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
out["new uts"] = attempt(clone, kernel.CLONE_NEWUTS)
out["plain"] = attempt(clone, 0)
"""
    group = f"checks-test-{os.getpid()}"
    without = probe(code, Cgroup(group, pids=1), pid.PidNamespace(), keep())
    with_ = probe(code, Cgroup(group, pids=1), pid.PidNamespace(), keep("CAP_SYS_ADMIN"))
    assert without["new uts"] == first("clone", ("capability", "EPERM"), ("cgroup", "EAGAIN")) == "EPERM"
    assert without["plain"] == with_["new uts"] == first("clone", ("cgroup", "EAGAIN")) == "EAGAIN"


def test_unshare_checks_its_flags_before_the_capability(no_leaks):
    clone_ptrace = 0x2000                   # a clone flag unshare(2) does not take
    code = f"""
out["bad flag"] = attempt(kernel.unshare, kernel.CLONE_NEWUTS | {clone_ptrace})
out["new uts"] = attempt(kernel.unshare, kernel.CLONE_NEWUTS)
"""
    got = probe(code, keep())
    assert got["bad flag"] == first("unshare", ("execute", "EINVAL"), ("capability", "EPERM")) == "EINVAL"
    assert got["new uts"] == first("unshare", ("capability", "EPERM")) == "EPERM"


def test_keyctl_is_refused_by_seccomp_before_the_key_is_looked_up(no_leaks):
    code = 'out["no such key"] = attempt(kernel.syscall, "keyctl", 0, 0x7ffffff0, 0, 0, 0)'
    filtered = probe(code, seccomp.Seccomp())               # KEYCTL_GET_KEYRING_ID of no key
    unfiltered = probe(code)
    assert filtered["no such key"] == first("keyctl", ("seccomp", "EPERM"), ("namespace", "ENOKEY")) == "EPERM"
    assert unfiltered["no such key"] == first("keyctl", ("namespace", "ENOKEY")) == "ENOKEY"


# --- the checks that deny nothing, in real traces ----------------------------------------

def _unexplained(prims: list) -> tuple[trace.Trace, list[str]]:
    """Trace a small shell session; list each capability check inside a call that
    succeeded which NON_DECIDING does not explain."""
    tr = trace.Trace()
    with spawn(["sh", "-c", "ls /; cat /etc/hostname; true"], [*prims, tr]) as p:
        tr.observe(p.pid)
        assert p.wait(60) == 0, p.stderr
    found = []
    for r in tr.command_records():
        for e in r.events:
            if e.name == "cap_capable" and r.errno is None and not r.syscall.startswith("["):
                cap = trace.CAPABILITIES[int(e.fields["cap"])]
                granted = not int(e.fields.get("ret", 0))
                if checks.quiet(r.syscall, cap, granted) is None:
                    found.append(f"{r.syscall}: {cap} {'granted' if granted else 'refused'}")
    return tr, found


def test_every_capability_check_in_calls_that_succeeded_is_explained(no_leaks):
    tr, found = _unexplained([pid.PidNamespace(), uts.UtsNamespace(), caps.Capabilities()])
    if tr.capability_source is None:
        pytest.skip("this kernel shows no capability checks (no tracepoint, no kprobes)")
    if tr.capability_source == trace.TRACEPOINT_SOURCE:
        # The tracepoint (6.14+) sees overcommit's checks in this session's mmap and fork.
        # The kprobe on the lab VMs' 6.1/6.12 saw none there: cap_vm_enough_memory calls
        # cap_capable directly in the same file (security/commoncap.c), and a probe sees
        # only calls to the function's own copy (inlining: our inference, not measured).
        assert any(e.name == "cap_capable" for r in tr.command_records() for e in r.events)
    assert not found, found


def test_inside_an_overlay_root_too(no_leaks):
    from labkit import mount
    if not os.path.isdir(rootfs.DEFAULT_ROOTFS):
        pytest.skip(f"no busybox rootfs at {rootfs.DEFAULT_ROOTFS} (labkit rootfs build)")
    tr, found = _unexplained([pid.PidNamespace(mount_proc=False), mount.MountNamespace(rootfs.DEFAULT_ROOTFS),
                              caps.Capabilities()])
    if tr.capability_source is None:
        pytest.skip("this kernel shows no capability checks (no tracepoint, no kprobes)")
    assert not found, found


def test_the_views_draw_the_familys_order_with_the_deciding_check_highlighted(no_leaks):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.patches import Rectangle
    from labkit.viz import trace_mermaid, trace_steps

    tr = trace.Trace()
    with spawn(["hostname", "traced"], [pid.PidNamespace(), uts.UtsNamespace(), caps.Capabilities(), tr]) as p:
        tr.observe(p.pid)
        p.wait(60)
    [rec] = [r for r in tr.command_records() if r.syscall == "sethostname"]
    order = checks.order("sethostname")
    ax = trace_steps.draw(tr, rec).axes[0]
    drawn = [a for a in ax.patches if isinstance(a, Rectangle)]
    assert len(drawn) == len(order)
    titles = [t.get_text() for t in ax.texts if t.get_text()[:1].isdigit()]
    assert titles == [f"{i + 1} {c.kind}" for i, c in enumerate(order)]
    decided = checks.deciding_index("sethostname", rec.deciding, rec.errno)
    assert order[decided].kind == rec.deciding == "capability"
    assert drawn[decided].get_linewidth() == 2 and drawn[decided].get_hatch() in (None, "")
    diagram = trace_mermaid.sequence(tr, [rec])
    assert diagram.index("K->>SC:") < diagram.index("K->>CAP:") < diagram.index("K--xApp: -1 EPERM")
    assert "EX:" not in diagram.split("participant EX")[1]      # nothing after the refusal
