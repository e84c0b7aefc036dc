"""labkit.trace on the real kernel: what tracefs recorded, and nothing left behind."""

from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import labkit_cli
from labkit import caps, ipc, pid, trace, tracebuf, user, uts
from labkit.cgroups import Cgroup
from labkit.errors import CommandNotFoundError
from labkit.spawn import spawn
from labkit.syscalls import syscall_name, syscall_number


def traced(argv: list[str], *prims, buffer_kb: int = 16384,
           syscalls: tuple[str, ...] = ()) -> tuple[trace.Trace, int]:
    tr = trace.Trace(buffer_kb=buffer_kb, syscalls=syscalls)
    with spawn(argv, [*prims, tr]) as proc:
        tr.observe(proc.pid)
        code = proc.wait()
    return tr, code


def calls(tr: trace.Trace, name: str) -> list[trace.Record]:
    return [r for r in tr.command_records() if r.syscall == name]


# --- tables and parsing (no kernel) -------------------------------------------

def test_syscall_tables_follow_the_kernels_numbering():
    assert syscall_name(170, "x86_64") == "sethostname"
    assert syscall_name(161, "aarch64") == "sethostname"
    assert syscall_name(59, "x86_64") == "execve" and syscall_name(221, "aarch64") == "execve"
    assert syscall_name(435, "x86_64") == syscall_name(435, "aarch64") == "clone3"
    assert syscall_name(9999, "x86_64") == "syscall_9999"
    assert syscall_number("openat", "aarch64") == 56


def test_parse_reads_tracefs_text_lines():
    lines = [
        "# tracer: nop\n",
        "        hostname-4242    [001] .....   100.000100: sys_enter: NR 170 (5581, 3, 0, 0, 0, 0)\n",
        "        hostname-4242    [001] .....   100.000101: cap_capable: cred 0000000012, "
        "target_ns 00000000ab, capable_ns 00000000ab, cap 21, ret -1\n",
        "        hostname-4242    [001] .....   100.000102: sys_exit: NR 170 = -1\n",
    ]
    events = tracebuf.parse(lines)
    assert [e.name for e in events] == ["sys_enter", "cap_capable", "sys_exit"]
    assert events[0].fields["NR"] == "170" and events[2].fields["ret"] == "-1"
    assert events[1].fields["cap"] == "21" and events[1].fields["target_ns"] == "00000000ab"


# --- real traces --------------------------------------------------------------

def test_sethostname_in_a_uts_namespace_is_allowed_after_a_cap_sys_admin_check(no_leaks):
    tr, code = traced(["hostname", "traced"], pid.PidNamespace(), uts.UtsNamespace())
    assert code == 0
    [rec] = calls(tr, "sethostname")
    assert rec.ret == 0 and rec.verdict == "allowed" and rec.deciding == "execute"
    assert rec.namespace == "uts" and rec.ns_owner == "container"
    assert rec.ns_inode == tr.container_ns["uts"] != tr.host_ns["uts"]
    assert "CAP_SYS_ADMIN checked in the host's user namespace: granted" in rec.checks(tr)
    assert tr.lost == 0
    # Where the check came from: the tracepoint (Linux 6.14 and later), else the kprobe
    # fallback (the lab VMs' 6.1 and 6.12); no_leaks checks the kprobe was removed.
    tracepoint = os.path.isdir(f"{trace.tracefs()}/events/capability/cap_capable")
    assert tr.capability_source == ("tracepoint capability:cap_capable" if tracepoint
                                    else "kprobe on cap_capable")


def test_sethostname_without_cap_sys_admin_is_denied_at_the_capability_step(no_leaks):
    tr, code = traced(["hostname", "traced"], pid.PidNamespace(), uts.UtsNamespace(),
                      caps.Capabilities())           # docker's default set: no CAP_SYS_ADMIN
    assert code != 0
    [rec] = calls(tr, "sethostname")
    assert rec.errno == "EPERM" and rec.deciding == "capability"
    assert "CAP_SYS_ADMIN checked in the host's user namespace: refused" in rec.checks(tr)
    if tr.capability_source:                         # the refused check is the event behind it
        assert rec.evidence == trace.OBSERVED and "CAP_SYS_ADMIN refused" in rec.basis


def test_sethostname_in_a_user_namespace_is_refused_in_the_containers_user_namespace(no_leaks):
    """Root of a new user namespace without CAP_SYS_ADMIN there: sethostname asks
    ns_capable(uts_ns->user_ns, CAP_SYS_ADMIN), and the UTS namespace made with it
    belongs to the container's user namespace (kernel/sys.c, user_namespaces(7))."""
    tr, code = traced(["hostname", "traced"], pid.PidNamespace(), user.UserNamespace(),
                      uts.UtsNamespace(), caps.Capabilities())
    assert code != 0
    [rec] = calls(tr, "sethostname")
    assert (rec.errno, rec.deciding, rec.evidence) == ("EPERM", "capability", trace.OBSERVED)
    assert rec.checks(tr)[-1] == "CAP_SYS_ADMIN checked in the container's user namespace: refused"


def test_opening_a_missing_path_is_an_inferred_failure_of_the_call_not_a_namespace(no_leaks):
    """No event shows a check refusing: the lookup found nothing. labkit says so,
    as an inference from the errno, and blames no namespace."""
    tr, code = traced(["cat", "/no/such/labkit/file"], pid.PidNamespace())
    assert code == 1
    rec = [r for r in calls(tr, "openat") if r.errno == "ENOENT"][-1]
    assert rec.namespace == "mnt"                    # the namespaces(7) table: which ns it names
    assert (rec.deciding, rec.evidence) == ("execute", trace.INFERRED)
    assert rec.basis.startswith("errno ENOENT; no event")


def test_a_call_the_seccomp_filter_denies_is_a_sys_exit_without_sys_enter_with_its_rule(no_leaks):
    """keyctl(2) under Docker's list: the filter answers EPERM before the sys_enter
    tracepoint, so the trace holds only its sys_exit, and names the filter's rule."""
    from labkit import seccomp

    program = f"import ctypes; ctypes.CDLL(None).syscall({syscall_number('keyctl')}, 0, 0, 0, 0)"
    filt = seccomp.Seccomp()
    tr = trace.Trace(seccomp_filter=filt)
    with spawn([sys.executable, "-c", program],
               [pid.PidNamespace(), caps.Capabilities(), filt, tr]) as proc:
        assert proc.wait() == 0
    [rec] = calls(tr, "keyctl")
    assert rec.errno == "EPERM" and rec.args == [trace.CHILD_RETURN]
    assert (rec.deciding, rec.evidence) == ("seccomp", trace.OBSERVED)
    assert rec.basis == "seccomp: keyctl -> SCMP_ACT_ERRNO(EPERM)"
    assert any(r.loads_seccomp() for r in tr.records)       # the filter's own prctl, traced


def test_an_oom_kill_is_observed_through_mark_victim(no_leaks):
    group = Cgroup(f"trace-oom-{os.getpid()}", memory="16M")
    tr, code = traced(["/bin/sh", "-c", "a=x; while true; do a=$a$a; done"], pid.PidNamespace(), group)
    assert code == -9 or code == 137
    [killed] = [r for r in tr.records if r.verdict == "killed by the OOM killer"]
    assert (killed.deciding, killed.evidence, killed.basis) == ("cgroup", trace.OBSERVED, "oom:mark_victim")


def test_fork_over_the_pids_limit_is_denied_at_the_cgroup_step(no_leaks):
    group = Cgroup(f"trace-test-{os.getpid()}", pids=3)
    shell = "for i in 1 2 3 4 5; do sleep 1 & done; wait"
    tr, _ = traced(["/bin/sh", "-c", shell], pid.PidNamespace(), group)
    denied = [r for r in tr.command_records() if r.syscall in ("clone", "clone3", "fork")
              and r.errno == "EAGAIN"]
    assert denied, "no fork failed with EAGAIN under pids.max=3"
    assert denied[0].deciding == "cgroup" and denied[0].cgroup["limit"] == 3
    assert denied[0].evidence == trace.OBSERVED and "(pids_max)" in denied[0].basis
    assert tr.cgroup_counts["pids_max"] == len(denied)     # pids.events "max": one per refusal


def test_syscalls_traces_only_the_calls_named_with_their_checks(no_leaks):
    """--syscalls: kprobes on the calls' own kernel functions where the kernel has
    kprobes (the lab VMs), else a filter on the tracepoints' id (this kind of host)."""
    tr, code = traced(["/bin/sh", "-c", "hostname traced; cat /no/such/labkit/file"],
                      pid.PidNamespace(), uts.UtsNamespace(), syscalls=("sethostname",))
    assert code == 1
    assert {r.syscall for r in tr.command_records() if not r.syscall.startswith("[")} == {"sethostname"}
    [rec] = calls(tr, "sethostname")
    assert rec.ret == 0 and rec.verdict == "allowed"
    if tr.capability_source:
        assert "CAP_SYS_ADMIN checked in the host's user namespace: granted" in rec.checks(tr)
    kprobes = os.path.exists(f"{trace.tracefs()}/kprobe_events")
    assert tr.syscall_source.startswith("kprobes on __" if kprobes else "raw_syscalls filtered on id")
    assert "only sethostname" in trace.summary_line(tr)


def test_the_trace_starts_before_the_first_execve_even_for_a_command_that_exits_at_once(no_leaks):
    tr, code = traced(["true"], pid.PidNamespace())
    assert code == 0
    first = tr.command_records()[0]
    assert first.syscall == "execve" and first.ret == 0
    assert any(e.name == "sched_process_exec" for e in first.events)
    assert tr.command_records()[-1].syscall == "exit_group"


def test_a_full_buffer_is_counted_as_lost_events_not_hidden(no_leaks):
    # dd with 1-byte blocks makes two syscalls a block: 40k events cannot fit in 4 KB a CPU.
    tr, code = traced(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=20000"],
                      pid.PidNamespace(), buffer_kb=4)
    assert code == 0
    assert tr.lost > 0
    assert f"lost events: {tr.lost} (the 4 KB buffer of a CPU filled: run again with --buffer-kb" \
        in trace.summary_line(tr)


def test_the_buffer_size_a_loss_suggests_loses_nothing(no_leaks):
    dd = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=20000"]
    small, _ = traced(dd, pid.PidNamespace(), buffer_kb=256)
    assert small.lost > 0
    suggested = trace.buffer_for_all(small)
    assert f"--buffer-kb {suggested}," in trace.summary_line(small)
    enough, code = traced(dd, pid.PidNamespace(), buffer_kb=suggested)
    assert code == 0 and enough.lost == 0, (suggested, enough.lost)


def test_a_large_enough_buffer_loses_nothing_at_100k_syscalls(no_leaks):
    tr, code = traced(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=50000"],
                      pid.PidNamespace())
    assert code == 0 and tr.lost == 0
    assert len(calls(tr, "read")) >= 50000 and len(calls(tr, "write")) >= 50000


def test_the_instance_is_removed_when_the_command_is_not_found(no_leaks):
    tr = trace.Trace()
    with pytest.raises(CommandNotFoundError):
        spawn(["/no/such/command"], [pid.PidNamespace(), tr])
    assert tr.dir is None
    tr.release()                                    # safe twice
    assert not [n for n in os.listdir(trace.instances()) if n.startswith(f"labkit-{os.getpid()}-")]


def test_ipc_calls_name_the_containers_ipc_namespace(no_leaks):
    tr, _ = traced(["ipcmk", "-Q"], ipc.IpcNamespace())
    [rec] = calls(tr, "msgget")
    assert rec.ret is not None and rec.ret >= 0
    assert rec.namespace == "ipc" and rec.ns_inode == tr.container_ns["ipc"] != tr.host_ns["ipc"]


# --- the CLI ------------------------------------------------------------------

def test_cli_trace_json_has_one_object_a_syscall(no_leaks):
    result = labkit_cli("trace", "--ns", "pid,uts", "--cap-add", "SYS_ADMIN", "--json", "--",
                        "hostname", "box")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stderr.splitlines()]
    records, summary = rows[:-1], rows[-1]
    for key in ("syscall", "ret", "namespace", "checks", "verdict", "deciding_step", "evidence", "basis"):
        assert all(key in r for r in records)
    [sethostname] = [r for r in records if r["syscall"] == "sethostname"]
    assert sethostname["verdict"] == "allowed" and sethostname["namespace"]["type"] == "uts"
    assert summary["lost"] == 0


def test_cli_trace_timeline_is_one_line_a_syscall_with_its_verdict(no_leaks):
    result = labkit_cli("trace", "--ns", "pid", "--", "cat", "/no/such/labkit/file")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any("openat" in line and "-1 ENOENT" in line and "<~ execute" in line for line in lines)
    assert lines[-2] == trace.LEGEND and "lost events: 0" in lines[-1]


def test_cli_trace_folds_a_repeated_block_of_plain_calls_and_no_fold_prints_each(no_leaks):
    """dd bs=1 alternates read and write: by default one read and one write line and a count."""
    argv = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=3000"]
    folded = labkit_cli("trace", "--ns", "pid", "--", *argv)
    each = labkit_cli("trace", "--ns", "pid", "--no-fold", "--", *argv)
    assert folded.returncode == each.returncode == 0, folded.stderr[-500:] + each.stderr[-500:]
    lines = folded.stderr.splitlines()
    [note] = [i for i, line in enumerate(lines) if "the 2 calls above, 3000 times in all" in line]
    assert " read " in lines[note - 2] and " write " in lines[note - 1]
    reads = [line for line in each.stderr.splitlines() if " read " in line and " 1 " in line]
    assert len(reads) == 3000 and len(lines) < 100
    assert lines[-2] == trace.LEGEND and "lost events: 0" in lines[-1]


def test_cli_trace_json_seccomp_denial_names_the_rule(no_leaks):
    """`labkit trace --json` of a probe calling keyctl: a seccomp denial, observed, with its rule."""
    program = f"import ctypes; ctypes.CDLL(None).syscall({syscall_number('keyctl')}, 0, 0, 0, 0)"
    result = labkit_cli("trace", "--json", "-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro",
                        "-v", "/usr/lib64:/lib64:ro", "--", "/usr/bin/python3", "-c", program)
    assert result.returncode == 0, result.stderr
    [keyctl] = [json.loads(line) for line in result.stderr.splitlines() if '"keyctl"' in line]
    assert (keyctl["errno"], keyctl["deciding_step"], keyctl["evidence"]) == ("EPERM", "seccomp", "observed")
    assert "keyctl -> SCMP_ACT_ERRNO(EPERM)" in keyctl["basis"]


def test_cli_trace_unknown_syscall_is_one_line_and_125(no_leaks):
    result = labkit_cli("trace", "--syscalls", "sethostname,nosuchcall", "--", "true")
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and "'nosuchcall' is no syscall" in result.stderr


def test_cli_trace_bad_buffer_size_is_one_line_and_125(no_leaks):
    result = labkit_cli("trace", "--buffer-kb", "0", "--", "true")
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and "--buffer-kb" in result.stderr


def test_cli_trace_as_non_root_is_one_line_and_125():
    from labkit.cli import main                     # imported as root: nobody cannot read the venv

    r, w = os.pipe()
    child = os.fork()
    if child == 0:                                  # as nobody: stderr -> the pipe
        sys.stderr = os.fdopen(w, "w")              # (pytest replaced sys.stderr)
        os.setgid(65534)
        os.setuid(65534)
        code = main(["trace", "--", "true"])
        sys.stderr.flush()
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        stderr = f.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 125
    assert stderr.count("\n") == 1 and "root" in stderr


# --- the views ----------------------------------------------------------------

def test_views_draw_the_five_steps_timeline_summary_and_mermaid_of_a_real_trace(no_leaks):
    import matplotlib
    matplotlib.use("Agg")
    from labkit.viz import trace_mermaid, trace_steps, trace_summary, trace_timeline

    tr, _ = traced(["hostname", "traced"], pid.PidNamespace(), uts.UtsNamespace(), caps.Capabilities())
    rec = calls(tr, "sethostname")[0]
    texts = trace_steps.step_texts(tr, rec)
    assert "uts ns (container's)" in texts["namespace"] and "refused" in texts["capability"]
    assert trace_steps.draw(tr, rec).axes[0].get_title().endswith("decided at step 'capability'")
    assert trace_timeline.draw(tr, tr.command_records()) is not None
    assert trace_timeline.draw_cases({"denied": tr}) is not None
    assert "uts ns (container's)" in trace_summary.text(tr, tr.command_records())
    diagram = trace_mermaid.sequence(tr, [rec])
    assert diagram.startswith("sequenceDiagram") and "K--xApp: -1 EPERM (decided at capability)" in diagram
