"""--init, and detached containers (run -d, logs, stop, kill, wait, rm), on the real kernel.

PID 1 of a PID namespace drops every signal it has no handler for, SIGKILL
and SIGSTOP from the host excepted, and orphans are re-parented to it
(pid_namespaces(7)). With --init, labkit's init is PID 1 and the command is
an ordinary process: SIGTERM from the host ends a shell, orphans are reaped.
Each test checks that the host is left as it found it (no_leaks).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import labkit_cli

from labkit import kernel, pid
from labkit.container import Container

# Without --init, PID 1 is the shell itself (busybox sh does not exec the
# sleep: a command follows it), and it has no SIGTERM handler.
SHELL = ["sh", "-c", "echo ready; sleep 1000; echo never"]


def until_ready(proc, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while "ready" not in proc.output_so_far():
        assert time.monotonic() < deadline, "the container did not say ready"
        time.sleep(0.02)


@pytest.mark.parametrize("init", [True, False], ids=["init", "no-init"])
def test_sigterm_from_the_host_ends_a_shell_only_with_init(init, no_leaks):
    with Container(init=init) as box:
        proc = box.start(SHELL)
        until_ready(proc)
        comm = open(f"/proc/{proc.pid}/comm").read().strip()
        os.kill(proc.pid, signal.SIGTERM)           # the container's PID 1, from the host
        status = proc.wait(timeout=3)
    if init:
        assert comm == "labkit-init", "with --init, PID 1 is labkit's init, not the shell"
        assert status == 128 + signal.SIGTERM, "init exits with the command's status, 128+N"
    else:
        assert comm == "sh"
        assert status is None, "PID 1 without a handler must drop SIGTERM (SIGNAL_UNKILLABLE)"


def test_init_forwards_other_signals_to_the_command(no_leaks):
    with Container(init=True) as box:
        proc = box.start(["sh", "-c", "trap 'exit 5' USR1; echo ready; while :; do sleep 0.1; done"])
        until_ready(proc)
        os.kill(proc.pid, signal.SIGUSR1)
        assert proc.wait(timeout=3) == 5


@pytest.mark.parametrize("init", [True, False], ids=["init", "no-init"])
def test_orphans_are_reaped_only_with_init(init, no_leaks):
    # (sleep 0.2 &): the subshell exits at once, its sleep is an orphan and is
    # re-parented to PID 1. Without --init PID 1 is `sleep 5` (exec), which never waits.
    with Container(init=init) as box:
        proc = box.start(["sh", "-c", "(sleep 0.2 &); exec sleep 5"])
        time.sleep(1.5)
        rows = pid.processes_in(kernel.ns_inode(proc.pid, "pid"))
    zombies = [r for r in rows if r.state == "Z"]
    if init:
        assert zombies == [], rows
        assert [(r.container_pid, r.command) for r in rows][1:] == [(2, "sleep")], "init, and the command"
    else:
        assert len(zombies) == 1 and zombies[0].command == "sleep", rows
        assert zombies[0].host_ppid == proc.pid, "the orphan's parent is PID 1"


def test_init_gives_the_command_what_it_gets_without_init(no_leaks):
    """Same capabilities, no_new_privs, seccomp filter and credentials; and with
    --init, the command is in every namespace of PID 1."""
    show = ["sh", "-c", "grep -E '^(Cap|NoNewPrivs|Seccomp|Uid|Gid|Groups)' /proc/self/status;"
                        " for n in /proc/self/ns/*; do [ $(readlink $n) = $(readlink /proc/1/ns/${n##*/}) ]"
                        " || echo differs ${n##*/}; done"]
    with_init = Container(init=True).run(show)
    without = Container().run(show)
    assert with_init.returncode == without.returncode == 0, with_init.stderr + without.stderr
    assert "Seccomp:\t2" in with_init.stdout and "NoNewPrivs:\t1" in with_init.stdout
    assert "CapEff:\t0000000000000000" not in with_init.stdout
    assert with_init.stdout == without.stdout
    assert "differs" not in with_init.stdout


def test_init_reports_a_missing_command_as_127(no_leaks):
    r = labkit_cli("run", "--init", "--", "no-such-command")
    assert r.returncode == 127 and len(r.stderr.splitlines()) == 1, r.stderr


# -- detached containers -----------------------------------------------------

def ps_names() -> dict[str, dict]:
    r = labkit_cli("ps", "--json")
    assert r.returncode == 0, r.stderr
    return {d["name"]: d for d in map(json.loads, r.stdout.splitlines())}


@pytest.fixture
def name(no_leaks):
    """A container name of this test; its record is removed however the test ends
    (before no_leaks looks at the host)."""
    n = f"lc-{os.getpid()}"
    yield n
    labkit_cli("rm", "-f", n)


def test_detach_stop_with_a_trap_logs_and_wait(name, no_leaks):
    started = time.monotonic()
    r = labkit_cli("run", "-d", "--name", name, "--",
                   "sh", "-c", "echo out; echo err >&2; trap 'echo bye; exit 3' TERM; while :; do sleep 1; done")
    assert r.returncode == 0 and r.stdout == f"{name}\n", r.stderr
    assert time.monotonic() - started < 20, "run -d returns while the endless command runs"
    assert name in ps_names(), "labkit ps lists a detached container"
    deadline = time.monotonic() + 5
    while (logs := labkit_cli("logs", name)).stdout.count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(logs.stdout.split()) == ["err", "out"], "stdout and stderr go to the log"
    t0 = time.monotonic()
    r = labkit_cli("stop", name)
    assert r.returncode == 0 and r.stdout == f"{name}\n", r.stderr
    # The trap's own status (3, below) shows SIGTERM ended it; 8 s is under stop's 10 s
    # timeout, so the SIGKILL never came (a TCG lab VM took 2.1 s where the host takes 0.3 s).
    assert time.monotonic() - t0 < 8, "the trap ends it before the 10 s timeout"
    r = labkit_cli("wait", name)
    assert (r.returncode, r.stdout) == (0, "3\n"), r.stderr
    assert labkit_cli("logs", name).stdout.split()[-1] == "bye", "the log is kept after the exit"
    assert name not in ps_names()
    r = labkit_cli("stop", name)
    assert r.returncode == 125 and len(r.stderr.splitlines()) == 1, r.stderr
    assert labkit_cli("rm", name).returncode == 0
    assert labkit_cli("wait", name).returncode == 125, "rm removed the record"


def test_stop_kills_a_command_that_ignores_term_after_the_timeout(name, no_leaks):
    r = labkit_cli("run", "-d", "--name", name, "--", "sh", "-c", "while :; do sleep 1; done")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    r = labkit_cli("stop", "-t", "1", name)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert 1.0 <= took < 5, f"SIGKILL after the 1 s timeout, not before: {took:.2f} s"
    r = labkit_cli("wait", name)
    assert r.stdout == "137\n", r.stdout + r.stderr


@pytest.mark.parametrize("given,status", [("USR1", 4), ("SIGUSR1", 4), (str(int(signal.SIGUSR1)), 4),
                                          (None, 137)])
def test_kill_sends_the_signal_by_name_or_number(name, given, status, no_leaks):
    r = labkit_cli("run", "-d", "--name", name, "--", "sh", "-c", "trap 'exit 4' USR1; while :; do sleep 0.1; done")
    assert r.returncode == 0, r.stderr
    r = labkit_cli("kill", *(["-s", given] if given else []), name)
    assert r.returncode == 0 and r.stdout == f"{name}\n", r.stderr
    assert labkit_cli("wait", name).stdout == f"{status}\n"


def test_kill_term_reaches_a_shell_with_init(name, no_leaks):
    r = labkit_cli("run", "-d", "--init", "--name", name, "--", "sh", "-c", "sleep 1000; echo never")
    assert r.returncode == 0, r.stderr
    assert labkit_cli("kill", "-s", "TERM", name).returncode == 0
    assert labkit_cli("wait", name).stdout == "143\n"


def test_logs_follow_until_the_exit(name, no_leaks):
    r = labkit_cli("run", "-d", "--name", name, "--", "sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.3; done; exit 2")
    assert r.returncode == 0, r.stderr
    r = labkit_cli("logs", "-f", name, timeout=20)
    assert (r.returncode, r.stdout) == (0, "1\n2\n3\n"), r.stderr
    assert labkit_cli("wait", name).stdout == "2\n"


def test_a_command_that_is_not_found_leaves_no_record(name, no_leaks):
    r = labkit_cli("run", "-d", "--name", name, "--", "no-such-command")
    assert r.returncode == 127 and len(r.stderr.splitlines()) == 1, r.stderr
    assert labkit_cli("wait", name).returncode == 125


@pytest.mark.parametrize("args", [["logs", "nosuch"], ["stop", "nosuch"], ["kill", "nosuch"], ["wait", "nosuch"],
                                  ["rm", "nosuch"], ["kill", "-s", "NOPE", "nosuch"], ["stop", "-t", "-1", "nosuch"],
                                  ["run", "-d", "--", "true"], ["run", "-d", "-t", "--name", "x", "--", "true"],
                                  ["run", "-d", "--restart", "on-failure", "--name", "x", "--", "true"]])
def test_bad_input_is_one_line_and_125(args, no_leaks):
    r = labkit_cli(*args)
    assert r.returncode == 125 and r.stdout == "" and len(r.stderr.splitlines()) == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr


def test_trace_with_init_traces_the_command(no_leaks):
    """The command is PID 1's child: the trace follows it (event-fork) from its execve."""
    r = labkit_cli("trace", "--init", "--json", "--syscalls", "sethostname", "--", "hostname", "x")
    assert r.returncode == 1, r.stderr
    records = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    calls = [x for x in records if x.get("syscall") == "sethostname"]
    assert len(calls) == 1 and calls[0]["phase"] == "command" and calls[0]["errno"] == "EPERM", calls
