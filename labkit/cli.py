"""The `labkit` command: Docker-like words for labkit's primitives.

Exit status (as docker run): the command's own; 125 when labkit itself
failed, with one line on stderr saying what, why and what to do; 126 when the
command cannot be executed; 127 when it is not found; 128+N when signal N
killed it.

This module keeps the `run` path light: it imports no jupyter, matplotlib or
pyroute2 (tests check it), so a container starts in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

from . import cgroups, container, detach, net, restart, rootfs, terminal
from .errors import LabkitError, NotRootError, UsageError
from .spawn import Primitive, Process, spawn

USAGE_EXAMPLES = """\
examples:
  labkit doctor                                  is this host ready?
  labkit run --hostname box -- hostname          prints: box
  labkit run -- ps -e                            only the container's processes
  labkit run -it --name box -- sh                a shell on a terminal, in a container named box
  labkit exec box -- ps                          another process in the running container box
  labkit ps                                      the named containers that run
  labkit cleanup [--dry-run]                     remove whatever labkit left behind
  labkit exercises build handout/                the student notebooks to hand out
  labkit check submissions/                      grade a class: a row per student (submissions/NAME/*.ipynb)
"""

# The namespaces --ns knows, and the default (DESIGN.md): container.py composes them.
NAMESPACES = container.ALL_NAMESPACES
NETWORKS = tuple(container.NETWORKS)
DEFAULT_NAMESPACES = ",".join(container.DEFAULT_NAMESPACES)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit 125 (not 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="labkit", description="Build a Linux container from kernel primitives.",
                     epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    doctor = sub.add_parser("doctor", help="check that this host is ready for the lab")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")

    run = sub.add_parser("run", help="run a command in a new container",
                         usage="labkit run [OPTIONS] [--] CMD [ARG...]")
    add_run_options(run)
    run.add_argument("-d", "--detach", action="store_true",
                     help="run in the background (needs --name); print the name; "
                          "then labkit logs|stop|kill|wait|rm NAME")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARG...]",
                     help="the command to run and its arguments")

    trace_cmd = sub.add_parser("trace", help="run a command and print what the kernel checked",
                               usage="labkit trace [OPTIONS] [--json] [--all] [--quiet-checks] [--no-fold] [--syscalls LIST] [--] CMD [ARG...]")
    add_run_options(trace_cmd)
    trace_cmd.add_argument("--json", action="store_true",
                           help="one JSON object a syscall (syscall, ret, checks, verdict, "
                                "deciding_step, evidence: observed|inferred|unknown, basis)")
    trace_cmd.add_argument("--quiet-checks", action="store_true",
                           help="list the capability checks that deny nothing (overcommit's reserve, "
                                "overlayfs's mounter), with why; by default they are counted")
    trace_cmd.add_argument("--no-fold", action="store_true",
                           help="one line per call, also in a run of the same successful call "
                                "(by default such a run is one line that says how many)")
    trace_cmd.add_argument("--all", action="store_true",
                           help="also show labkit's own setup syscalls before the command's execve")
    trace_cmd.add_argument("--syscalls", metavar="LIST", default="",
                           help="trace only these syscalls, comma-separated (e.g. sethostname,mount): "
                                "with kprobes the other calls keep the kernel's fast path")
    trace_cmd.add_argument("--buffer-kb", type=int, default=16384, metavar="KB",
                           help="tracefs buffer per CPU (default 16384); lost events are reported")
    trace_cmd.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARG...]",
                           help="the command to run and its arguments")

    exec_cmd = sub.add_parser("exec", help="run another command in a running named container",
                              usage="labkit exec [-i] [-t] NAME [--] CMD [ARG...]")
    add_terminal_options(exec_cmd)
    exec_cmd.add_argument("container", metavar="NAME", help="the --name given to labkit run")
    exec_cmd.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARG...]",
                          help="the command to run and its arguments")

    ps_cmd = sub.add_parser("ps", help="list the named containers that run")
    ps_cmd.add_argument("--json", action="store_true", help="one JSON object a container")

    sub.add_parser("cleanup", help="remove every kernel object labkit left behind").add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing")
    detach.add_commands(sub, _Parser)

    rootfs_cmd = sub.add_parser("rootfs", help="build a root filesystem for containers")
    rootfs_sub = rootfs_cmd.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    rootfs_sub.required = True
    build = rootfs_sub.add_parser("build", help="build the busybox rootfs (or import a tarball) into DIR")
    build.add_argument("dir", nargs="?", default=rootfs.DEFAULT_ROOTFS, metavar="DIR",
                       help=f"where to build it (default: {rootfs.DEFAULT_ROOTFS})")
    build.add_argument("--from", dest="tarball", metavar="TARBALL",
                       help="import this rootfs tarball (Alpine minirootfs, docker export) instead")

    exercises_cmd = sub.add_parser("exercises", help="make the student notebooks of a class")
    exercises_sub = exercises_cmd.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    exercises_sub.required = True
    ex_build = exercises_sub.add_parser("build", help="write student notebooks (answers stubbed, outputs cleared)")
    ex_build.add_argument("outdir", metavar="OUTDIR", help="the folder to hand out")
    ex_build.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                          help="solution notebooks (default: every notebooks/NN-*.ipynb)")
    check = sub.add_parser("check", help="run notebooks headlessly and report each exercise passed or failed")
    check.add_argument("paths", nargs="+", metavar="PATH",
                       help="notebooks, a student's folder of notebooks, or a class folder (a subfolder per student)")
    check.add_argument("--json", action="store_true",
                       help="print one JSON document, students -> notebooks -> exercises (for a gradebook)")
    check.add_argument("--solutions", default=None, metavar="DIR",
                       help="the solution notebooks whose check cells grade (default: this checkout's notebooks/)")
    check.add_argument("--timeout", type=int, default=300, metavar="SECONDS",
                       help="longest a cell may run before it is interrupted (default 300)")
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options that describe a container (shared by run and trace)."""
    parser.add_argument("--hostname", metavar="NAME", help="hostname in the UTS namespace")
    parser.add_argument("--rootfs", metavar="DIR",
                        help=f"root filesystem (default: the busybox rootfs in {rootfs.DEFAULT_ROOTFS}, "
                             "built on first use); needs the mount namespace")
    parser.add_argument("--volume", "-v", action="append", metavar="HOST:CTR[:ro]", default=[],
                        help="bind-mount a host path into the container, read-only with :ro (repeatable)")
    parser.add_argument("--ns", metavar="LIST", default=None,
                        help=f"namespaces to create, comma-separated, of: {', '.join(NAMESPACES)} "
                             f"(default: those of {DEFAULT_NAMESPACES} available)")
    parser.add_argument("--name", metavar="NAME",
                        help="name the container: labkit exec NAME and labkit ps find it while it runs")
    parser.add_argument("--init", action="store_true",
                        help="PID 1 is a minimal init that forwards signals to the command and reaps "
                             "orphans (as docker run --init): kill -TERM then ends a shell")
    add_terminal_options(parser)
    parser.add_argument("--security-opt", action="append", metavar="seccomp=unconfined", default=[],
                        help="seccomp=unconfined: no seccomp filter (default: Docker's denied calls fail with EPERM)")
    parser.add_argument("--net", choices=list(NETWORKS), default="none",
                        help="none: own network namespace with lo only (default); "
                             f"bridge: a veth on bridge {net.BRIDGE} ({net.BRIDGE_ADDRESS})")
    parser.add_argument("--ip", metavar="ADDR/PREFIX",
                        help=f"the container's address with --net bridge, in {net.LAB_NETWORK} "
                             f"(default: the next free one from {net.FIRST_ADDRESS})")
    parser.add_argument("--userns", action="store_true",
                        help="add a user namespace: root inside is uid 100000 outside "
                             "(your own uid when you are not root); needed to run without root")
    parser.add_argument("--uid-map", action="append", metavar="INSIDE:OUTSIDE:COUNT",
                        help="a uid range of the user namespace (repeatable; default 0:100000:65536)")
    parser.add_argument("--gid-map", action="append", metavar="INSIDE:OUTSIDE:COUNT",
                        help="a gid range of the user namespace (repeatable; default 0:100000:65536)")
    parser.add_argument("--cap-add", action="append", metavar="CAP", default=[],
                        help="keep this capability too (repeatable; ALL for every one)")
    parser.add_argument("--cap-drop", action="append", metavar="CAP", default=[],
                        help="drop this capability of Docker's default 14 (repeatable; ALL for every one)")
    limits = parser.add_argument_group("limits (cgroups under labkit/, and tc on the veth)")
    limits.add_argument("--cpus", metavar="N", help="CPU time, in CPUs: 0.5 is half of one core (cpu controller)")
    limits.add_argument("--memory", "-m", metavar="SIZE",
                        help="memory limit, e.g. 32M; past it the kernel's OOM killer acts (exit 137); "
                             f"default {container.DEFAULT_LIMITS['memory']} as root, max for none")
    limits.add_argument("--pids", metavar="N", help="most tasks at once, e.g. 32; then fork() fails with EAGAIN; "
                                                    f"default {container.DEFAULT_LIMITS['pids']} as root, max for none")
    limits.add_argument("--io-read-bps", metavar="[DEV:]RATE",
                        help="disk read rate, e.g. 2MB/s, on DEV (default: the disk holding /)")
    limits.add_argument("--io-write-bps", metavar="[DEV:]RATE",
                        help="disk write rate, e.g. /dev/loop0:2MB/s (direct I/O is what it throttles on v1)")
    limits.add_argument("--bandwidth", metavar="RATE",
                        help="network rate both ways, e.g. 1mbit: tc tbf on the veth (needs --net bridge)")
    limits.add_argument("--restart", metavar="no|on-failure[:N]", default="no",
                        help="start the command again when it exits non-zero, at most N times")


def namespace_names(spec: str | None) -> list[str]:
    """Parse --ns into known namespace names, in the order given."""
    if spec is None:
        return [n for n in DEFAULT_NAMESPACES.split(",") if n in NAMESPACES]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        if n not in NAMESPACES:
            raise UsageError(f"unknown namespace {n!r} in --ns",
                             f"choose from {', '.join(NAMESPACES)}")
    return list(dict.fromkeys(names))


def add_terminal_options(parser: argparse.ArgumentParser) -> None:
    """-i and -t, as docker run/exec spell them."""
    parser.add_argument("-i", "--interactive", action="store_true",
                        help="keep stdin attached (it always is: accepted as docker spells -it)")
    parser.add_argument("-t", "--tty", action="store_true",
                        help="give the command a terminal (a pty, its controlling terminal); "
                             "your terminal is in raw mode meanwhile")


SECURITY_OPTS = {"seccomp=unconfined": "seccomp"}    # --security-opt value -> the Container flag it clears


def container_for(args: argparse.Namespace) -> container.Container:
    """The Container that `run`'s options describe (every value checked here)."""
    for opt in args.security_opt:
        if opt not in SECURITY_OPTS:
            raise UsageError(f"unknown --security-opt {opt!r}", f"use one of {', '.join(SECURITY_OPTS)}")
    return container.Container(
        args.rootfs, name=getattr(args, "name", None), hostname=args.hostname,
        namespaces=namespace_names(args.ns), volumes=args.volume, net=args.net, ip=args.ip,
        userns=args.userns, uid_map=args.uid_map, gid_map=args.gid_map, cpus=args.cpus,
        memory=args.memory, pids=args.pids, io_read_bps=args.io_read_bps,
        io_write_bps=args.io_write_bps, bandwidth=args.bandwidth, cap_add=args.cap_add,
        cap_drop=args.cap_drop, seccomp="seccomp=unconfined" not in args.security_opt,
        init=args.init,
        group=None if getattr(args, "name", None) else f"run-{os.getpid()}")


def primitives_for(args: argparse.Namespace) -> list[Primitive]:
    """The primitives a `run` asks for, in launch order (container.py composes them)."""
    return container_for(args).primitives()


def command_of(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command given", "name one, e.g. labkit run -- /bin/sh -c 'echo hi'")
    return cmd


def exit_status(returncode: int) -> int:
    """subprocess-style return code -> shell exit status (128+N for signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def _on_signal(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through `with`: kill, reap, release


# Options that need host root even with a user namespace, and why: user_namespaces(7),
# its capabilities cover only what it owns, not the host's cgroups, links or bridge.
NEEDS_HOST_ROOT = {
    "memory": "--memory writes the host's cgroup files", "cpus": "--cpus writes the host's cgroup files",
    "pids": "--pids writes the host's cgroup files", "io_read_bps": "--io-read-bps writes the host's cgroup files",
    "io_write_bps": "--io-write-bps writes the host's cgroup files",
    "bandwidth": "--bandwidth changes a link on the host", "ip": "--ip configures the host's bridge labkit0",
    "net": "--net bridge plugs a link into the host's bridge labkit0",
}


def check_rootless(args: argparse.Namespace) -> None:
    """Without root, refuse (in one clear line) what only host root may do."""
    if os.geteuid() == 0:
        return
    if not (args.userns or "user" in namespace_names(args.ns)):
        raise NotRootError()              # (a rootless container needs --userns)
    for dest, why in NEEDS_HOST_ROOT.items():
        if getattr(args, dest, None) not in (None, False, [], "none"):
            raise LabkitError(f"{why}, which needs host root", "run labkit as root, or leave the option out")


def cmd_run(args: argparse.Namespace) -> int:
    check_rootless(args)
    argv = command_of(args)
    policy = restart.parse_restart(args.restart)
    if args.detach:
        detach.check_options(args.name, args.tty, args.interactive, args.restart)
    box = container_for(args)                           # check every option before the first start
    if args.detach:
        return detach.run_detached(box, argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    restarts = 0
    while True:
        with box:                                       # fresh primitives (a fresh cgroup) each start
            status = attached(lambda **io: box.start(argv, **io), args.tty)
            report_oom(box.prims)                       # before release() removes the cgroup
        if not policy.should_restart(status, restarts):
            return status
        restarts += 1
        print(f"labkit: exit status {status}; {policy.describe(restarts)}", file=sys.stderr)


def attached(start: Callable[..., Process], tty: bool) -> int:
    """Start a process with our stdin/stdout/stderr, or on a new pty relayed to
    our terminal with -t; wait for it; return its exit status."""
    if not tty:
        return exit_status(start(capture=False).wait() or 0)
    master, slave = terminal.open_pty()
    try:
        try:
            proc = start(capture=False, stdio=(slave, slave, slave), tty=True)
        finally:
            os.close(slave)                             # the container holds the only slave now
        terminal.relay(master, lambda: proc.poll() is not None)
        return exit_status(proc.wait() or 0)
    finally:
        os.close(master)


def cmd_exec(args: argparse.Namespace) -> int:
    """`labkit exec NAME -- CMD`: join the running container's namespaces and cgroups."""
    if os.geteuid() != 0:
        raise NotRootError()
    argv = command_of(args)
    box = container.attach(args.container)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    return attached(lambda **io: box.exec_start(argv, **io), args.tty)


def cmd_ps(args: argparse.Namespace) -> int:
    """`labkit ps`: the named containers that run (stale state is removed on the way)."""
    found = container.running()
    if args.json:
        import json

        for name, state in found.items():
            print(json.dumps({"name": name, "pid": state["pid"], "address": state.get("address"),
                              "command": state.get("argv", [])}))
        return 0
    print(f"{'NAME':<16} {'PID':>8}  {'ADDRESS':<12}  COMMAND")
    for name, state in found.items():
        print(f"{name:<16} {state['pid']:>8}  {state.get('address') or '-':<12}  {' '.join(state.get('argv', []))}")
    return 0


def report_oom(prims: list[Primitive]) -> None:
    """Say so on stderr when the kernel's OOM killer acted in the container's cgroup."""
    for p in prims:
        if isinstance(p, cgroups.Cgroup) and p.events().get("oom_kill"):
            print(f"labkit: the kernel's OOM killer killed the command at the memory limit "
                  f"(oom_kill {p.events()['oom_kill']} in cgroup labkit/{p.group})", file=sys.stderr)


def cmd_trace(args: argparse.Namespace) -> int:
    """`labkit trace`: run like `run`, then print the timeline on stderr (as strace does)."""
    from . import trace
    from .seccomp import Seccomp

    if os.geteuid() != 0:
        raise NotRootError()
    if args.buffer_kb < 1:
        raise UsageError(f"--buffer-kb {args.buffer_kb} is not a size", "give kilobytes per CPU, e.g. 16384")
    argv = command_of(args)
    prims = primitives_for(args)
    tracer = trace.Trace(buffer_kb=args.buffer_kb,       # the filter: to name the rule of a denial
                         seccomp_filter=next((p for p in prims if isinstance(p, Seccomp)), None),
                         syscalls=[name for name in args.syscalls.split(",") if name])
    prims.append(tracer)                        # last: joins after, releases before the others
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    with spawn(argv, prims, capture=False) as proc:
        tracer.observe(proc.pid)
        returncode = proc.wait()
    records = tracer.records if args.all else tracer.command_records()
    if args.json:
        import json

        for r in records:
            print(json.dumps(r.as_dict(tracer)), file=sys.stderr)
        print(json.dumps({"summary": trace.summary_line(tracer), "lost": tracer.lost}), file=sys.stderr)
    else:
        print(trace.format_timeline(tracer, records, quiet=args.quiet_checks, fold=not args.no_fold),
              file=sys.stderr)
    return exit_status(returncode or 0)


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor

    results = doctor.checks()
    if args.json:
        import json

        print(json.dumps({"ready": doctor.ready(results), "checks": doctor.as_dicts(results)}, indent=2))
    else:
        print(doctor.report(results))
    return 0 if doctor.ready(results) else 1


def cmd_cleanup(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotRootError()
    from .cleanup import cleanup

    removed = cleanup(dry_run=args.dry_run)
    for line in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {line}")
    print(f"{len(removed)} object(s) {'to remove' if args.dry_run else 'removed'}" if removed
          else "nothing to clean: the host is as labkit found it")
    return 0


def cmd_rootfs(args: argparse.Namespace) -> int:
    """`labkit rootfs build [DIR] [--from TARBALL]`."""
    if os.geteuid() != 0:
        raise NotRootError()
    if args.tarball:
        path = rootfs.import_tarball(args.tarball, args.dir)
    else:
        path = rootfs.build(args.dir)
    print(f"rootfs ready: {path}")
    return 0


def cmd_exercises_build(args: argparse.Namespace) -> int:
    """`labkit exercises build OUTDIR [NOTEBOOK...]`: the student versions to hand out."""
    import glob

    from . import exercises

    notebooks = args.notebooks or sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "[0-9][0-9]-*.ipynb")))
    if not notebooks:
        raise UsageError(f"no notebook in {NOTEBOOK_DIR}", "name the solution notebooks to build from")
    for path, answers in exercises.build(args.outdir, notebooks):
        print(f"{path}: {answers} answer(s) replaced by a stub")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """`labkit check PATH...`: a table, a row per student, a column per exercise;
    exit 0 when every exercise passed, 1 when any failed. Progress goes to stderr."""
    import json
    import time

    from . import exercises

    if args.timeout < 1:
        raise UsageError(f"--timeout {args.timeout} is not a duration", "give seconds, e.g. 300")
    solutions = args.solutions or NOTEBOOK_DIR
    if not os.path.isdir(solutions):
        raise UsageError(f"--solutions {solutions} is not a directory", "give the folder of the solution notebooks")
    # Bad input is refused before anything runs.
    subs, skipped = exercises.gradable(exercises.submissions(args.paths), solutions)
    for why in skipped:
        print(f"labkit check: skipped {why}", file=sys.stderr)
    graded = []
    for n, sub in enumerate(subs, 1):
        print(f"labkit check: [{n}/{len(subs)}] {sub.student}: {sub.path} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        report = exercises.run(sub.path, solutions, timeout=args.timeout)
        done = sum(e.passed for e in report.exercises)
        print(f"labkit check: [{n}/{len(subs)}] {done} of {len(report.exercises)} passed "
              f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        graded.append((sub, report))
    if args.json:
        print(json.dumps(exercises.gradebook(graded), indent=2, ensure_ascii=False))
    else:
        print(exercises.format_table(graded))
        print(exercises.summary([r for _, r in graded]))
    return 0 if all(r.passed for _, r in graded) else 1


# The repository's solution notebooks (labkit is installed editable from the checkout).
NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "doctor": cmd_doctor, "cleanup": cmd_cleanup, "rootfs": cmd_rootfs,
    "trace": cmd_trace, "exercises": cmd_exercises_build, "check": cmd_check,
    "exec": cmd_exec, "ps": cmd_ps, **detach.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except LabkitError as e:
        print(f"labkit: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def entry() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    entry()
