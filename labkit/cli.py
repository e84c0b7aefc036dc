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
import contextlib
import os
import re
import signal
import sys
from typing import IO, Callable, Iterator, NoReturn, Sequence

from . import __version__, cgroups, container, detach, net, restart, rootfs, terminal
from .errors import CommandNotFoundError, LabkitError, NotRootError, UsageError
from .spawn import Primitive, Process, exit_status, spawn

USAGE_EXAMPLES = """\
examples:
  labkit doctor                                  is this host ready?
  labkit run -h box -- hostname                  prints: box
  labkit run -e GREETING=hi -w /src -u 1000 -- sh -c 'echo $GREETING; pwd; id -u'
  labkit run --read-only --tmpfs /tmp -- touch /tmp/ok
  labkit run -- ps -e                            only the container's processes
  labkit run -it --name box -- sh                a shell on a terminal, in a container named box
  labkit exec box -- ps                          another process in the running container box
  labkit ps                                      the named containers that run
  labkit cleanup [--dry-run]                     remove whatever labkit left behind
  labkit exercises build handout/                the student notebooks to hand out
  labkit check submissions/                      grade a class: a row per student (submissions/NAME/*.ipynb)
"""

EXIT_CODES = """\
exit status (as docker run):
  the command's own     when it ran and exited
  125                   labkit failed (one line on stderr: what, why, what to do)
  126                   the command cannot be executed
  127                   the command was not found in the container
  128+N                 signal N killed the command (137: SIGKILL, e.g. the OOM killer)
"""

# Docker's `run` options that labkit lacks, and why: each is refused in one line.
DOCKER_ONLY: dict[tuple[str, ...], str] = {
    ("--platform",): "labkit runs programs of the host's own architecture, from a root filesystem",
    ("--pull", "--disable-content-trust", "-q", "--quiet"):
        "labkit pulls nothing: it runs a root filesystem (--rootfs DIR), not an image from a registry",
    ("-p", "--publish", "-P", "--publish-all", "--expose"):
        "labkit forwards no ports: with --network bridge the host reaches the container's address directly",
    ("--mount",): "labkit mounts with -v/--volume HOST:CTR[:ro] and --tmpfs PATH",
    ("--gpus", "--device", "--device-cgroup-rule"):
        "labkit gives a container only the devices of its minimal /dev",
    ("--privileged",): "labkit has no privileged mode: relax one step at a time with --cap-add "
                       "and --security-opt seccomp=unconfined",
    ("--entrypoint",): "labkit runs no image, so there is no entrypoint: give the command after --",
    ("-l", "--label", "--label-file", "--annotation"): "labkit keeps no metadata on a container",
    ("--cidfile",): "a labkit container has no ID: give it a --name",
    ("--dns", "--dns-option", "--dns-search", "--add-host", "--domainname"):
        "labkit writes no /etc/resolv.conf or /etc/hosts: the root filesystem's are used",
    ("--ulimit",): "labkit sets no resource limits (setrlimit): use -m, --cpus, --pids-limit (cgroups)",
    ("--cgroupns", "--ipc", "--pid", "--uts"): "labkit chooses the namespaces with --ns LIST",
    ("--cgroup-parent",): "labkit's cgroups are always under labkit/",
    ("--memory-swap", "--memory-reservation", "--memory-swappiness", "--kernel-memory",
     "--oom-kill-disable", "--oom-score-adj"): "labkit's memory limit is -m/--memory alone (no swap on top)",
    ("-c", "--cpu-shares", "--cpu-period", "--cpu-quota", "--cpuset-cpus", "--cpuset-mems",
     "--cpu-rt-period", "--cpu-rt-runtime", "--cpu-count", "--cpu-percent"):
        "labkit's CPU limit is --cpus N",
    ("--blkio-weight", "--blkio-weight-device", "--device-read-bps", "--device-write-bps",
     "--device-read-iops", "--device-write-iops"):
        "labkit's disk limits are --io-read-bps/--io-write-bps [DEV:]RATE",
    ("--ip6", "--mac-address", "--link", "--link-local-ip", "--network-alias"):
        "labkit's bridge network gives an IPv4 address only (--ip ADDR/PREFIX)",
    ("--log-driver", "--log-opt"): "labkit keeps no log driver: the container writes to labkit's stdout and stderr",
    ("--health-cmd", "--health-interval", "--health-retries", "--health-start-period",
     "--health-start-interval", "--health-timeout", "--no-healthcheck"): "labkit runs no health checks",
    ("--runtime", "--isolation"): "labkit is the runtime: there is no other to choose",
    ("--sysctl",): "labkit sets no sysctl: the container's /proc/sys is read-only",
    ("--group-add",): "labkit gives the user of -u UID:GID its group alone",
    ("--shm-size",): "the container's /dev/shm is a fixed tmpfs of 64M",
    ("--stop-signal", "--stop-timeout"): "labkit stop sends SIGTERM, then SIGKILL after its own -t",
    ("--storage-opt", "--volume-driver", "--volumes-from"):
        "labkit's storage is an overlay on the root filesystem, with -v bind mounts",
    ("-a", "--attach", "--sig-proxy", "--detach-keys"):
        "labkit attaches stdin, stdout and stderr and forwards signals, always",
}

# Options of `run` that `trace` refuses: trace runs one unnamed container to its end.
RUN_ONLY: dict[tuple[str, ...], str] = {
    ("--name",): "trace runs one unnamed container: run it with labkit run --name to exec into it",
    ("-i", "--interactive", "-t", "--tty"):
        "trace gives the command no terminal: its timeline would mix with your session",
    ("--restart",): "trace runs the command once",
    ("--rm",): "trace always removes its container (as run does)",
    ("-d", "--detach"): "trace waits for the command to end, to print what the kernel checked",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit 125 (not 2), and an
    option is never guessed from its first letters (``--ho`` is not ``--hostname``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)      # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see `{self.prog} --help`")


def refusal(command: str, option: str) -> UsageError | None:
    """The one-line refusal of an option `command` does not take but knows of
    (DOCKER_ONLY; RUN_ONLY for trace), or None for an option nobody knows."""
    name = option.split("=", 1)[0] if option.startswith("--") else option[:2]
    tables = (DOCKER_ONLY, RUN_ONLY) if command == "trace" else (DOCKER_ONLY,)
    for table in tables:
        for options, why in table.items():
            if name in options:
                return UsageError(f"{name} is not an option of labkit {command}", why)
    return None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; an option of Docker's that labkit lacks is refused
    with the reason (a lookup, not a parser option: the parser stays small)."""
    args, unknown = build_parser(argv[0] if argv else None).parse_known_args(argv)
    for option in unknown:
        if option.startswith("-") and args.command in ("run", "trace"):
            error = refusal(args.command, option)
            if error is not None:
                raise error
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)}", "see `labkit --help`")
    return args


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``command`` ("run" or "trace"), the
    other one of those two gets no options (a `labkit run` builds less)."""
    parser = _Parser(prog="labkit", description="Build a Linux container from kernel primitives.",
                     epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"labkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    doctor = sub.add_parser("doctor", help="check that this host is ready for the lab")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")

    # run and trace: -h is --hostname, as docker spells it; --help is help.
    run = sub.add_parser("run", help="run a command in a new container", add_help=False,
                         usage="labkit run [OPTIONS] [--] CMD [ARG...]", epilog=EXIT_CODES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    if command in (None, "run"):
        add_run_parser(run)

    trace_cmd = sub.add_parser("trace", help="run a command and print what the kernel checked", add_help=False,
                               usage="labkit trace [OPTIONS] [--json] [-o FILE] [--all] [--quiet-checks] "
                                     "[--no-fold] [--syscalls LIST] [--] CMD [ARG...]",
                               epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    if command in (None, "trace"):
        add_trace_parser(trace_cmd)
    add_other_commands(sub)
    return parser


def add_run_parser(run: argparse.ArgumentParser) -> None:
    run.add_argument("--help", action="help", help="show this help and exit")
    add_container_options(run)
    add_run_only_options(run)
    run.add_argument("-d", "--detach", action="store_true",
                     help="run in the background (needs --name); print the name; "
                          "then labkit logs|stop|kill|wait|rm NAME")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARG...]",
                     help="the command to run and its arguments")


def add_trace_parser(trace_cmd: argparse.ArgumentParser) -> None:
    trace_cmd.add_argument("--help", action="help", help="show this help and exit")
    add_container_options(trace_cmd)
    trace_cmd.add_argument("--json", action="store_true",
                           help="one JSON object a syscall (syscall, ret, checks, verdict, "
                                "deciding_step, evidence: observed|inferred|unknown, basis)")
    trace_cmd.add_argument("-o", "--output", metavar="FILE",
                           help="write the timeline (or the JSON) to FILE instead of stderr")
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


def add_other_commands(sub: argparse._SubParsersAction) -> None:
    """exec, ps, cleanup, rootfs, exercises, check."""
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


def add_container_options(parser: argparse.ArgumentParser) -> None:
    """The options that describe a container (shared by run and trace), Docker's words."""
    parser.add_argument("--rootfs", metavar="DIR",
                        help=f"root filesystem (default: the busybox rootfs in {rootfs.DEFAULT_ROOTFS}, "
                             "built on first use); labkit runs a directory, not an image")
    parser.add_argument("-h", "--hostname", metavar="NAME", help="hostname in the UTS namespace")
    parser.add_argument("--ns", metavar="LIST", default=None,
                        help=f"namespaces to create, comma-separated, of: {', '.join(container.ALL_NAMESPACES)} "
                             f"(default: {','.join(container.DEFAULT_NAMESPACES)})")
    parser.add_argument("-v", "--volume", action="append", metavar="HOST:CTR[:ro]", default=[],
                        help="bind-mount a host path into the container, read-only with :ro (repeatable)")
    parser.add_argument("--tmpfs", action="append", metavar="PATH", default=[],
                        help="mount an empty tmpfs at PATH (mode 1777, nosuid, nodev; repeatable)")
    parser.add_argument("--read-only", action="store_true",
                        help="mount the root filesystem read-only (/proc, /dev, /sys, volumes and tmpfs as they are)")
    parser.add_argument("-e", "--env", action="append", metavar="K=V", default=[],
                        help="set an environment variable; K alone takes labkit's own value of K (repeatable)")
    parser.add_argument("--env-file", action="append", metavar="FILE", default=[],
                        help="read K=V lines from FILE (# comments and blank lines skipped; -e wins)")
    parser.add_argument("-w", "--workdir", metavar="DIR",
                        help="the command's working directory inside the container (made if missing)")
    parser.add_argument("--init", action="store_true",
                        help="PID 1 is a minimal init that forwards signals to the command and reaps "
                             "orphans (as docker run --init): kill -TERM then ends a shell")
    parser.add_argument("-u", "--user", metavar="UID[:GID]",
                        help="run the command as this numeric user (group 0 without GID); "
                             "a non-root user has no capabilities (capabilities(7))")
    parser.add_argument("--userns", action="store_true",
                        help="add a user namespace: root inside is uid 100000 outside "
                             "(your own uid when you are not root); needed to run without root")
    parser.add_argument("--userns=host", dest="userns", action="store_false",
                        help="no user namespace: the host's users (the default)")
    parser.add_argument("--uid-map", action="append", metavar="INSIDE:OUTSIDE:COUNT",
                        help="a uid range of the user namespace (repeatable; default 0:100000:65536)")
    parser.add_argument("--gid-map", action="append", metavar="INSIDE:OUTSIDE:COUNT",
                        help="a gid range of the user namespace (repeatable; default 0:100000:65536)")
    parser.add_argument("--network", "--net", dest="network", metavar="none|bridge", default="none",
                        type=network_mode,
                        help="none: own network namespace with lo only (default); "
                             f"bridge: a veth on bridge {net.BRIDGE} ({net.BRIDGE_ADDRESS})")
    parser.add_argument("--ip", metavar="ADDR/PREFIX",
                        help=f"the container's address with --network bridge, in {net.LAB_NETWORK} "
                             f"(default: the next free one from {net.FIRST_ADDRESS})")
    parser.add_argument("--cap-add", action="append", metavar="CAP", default=[],
                        help="keep this capability too (repeatable; ALL for every one)")
    parser.add_argument("--cap-drop", action="append", metavar="CAP", default=[],
                        help="drop this capability of Docker's default 14 (repeatable; ALL for every one)")
    parser.add_argument("--security-opt", action="append", metavar="OPT", default=[],
                        help="seccomp=unconfined: no seccomp filter; seccomp=PROFILE.json: a Docker-format "
                             "profile; no-new-privileges: accepted (always on)")
    limits = parser.add_argument_group("limits (cgroups under labkit/, and tc on the veth)")
    limits.add_argument("--cpus", metavar="N", help="CPU time, in CPUs: 0.5 is half of one core (cpu controller)")
    limits.add_argument("-m", "--memory", metavar="SIZE",
                        help="memory limit, e.g. 32M; past it the kernel's OOM killer acts (exit 137); "
                             f"default {container.DEFAULT_LIMITS['memory']} as root, max for none")
    limits.add_argument("--pids-limit", "--pids", dest="pids", metavar="N",
                        help="most tasks at once, e.g. 32; then fork() fails with EAGAIN; "
                             f"default {container.DEFAULT_LIMITS['pids']} as root, -1 or max for none")
    limits.add_argument("--io-read-bps", metavar="[DEV:]RATE",
                        help="disk read rate, e.g. 2MB/s, on DEV (default: the disk holding /)")
    limits.add_argument("--io-write-bps", metavar="[DEV:]RATE",
                        help="disk write rate, e.g. /dev/loop0:2MB/s (direct I/O is what it throttles on v1)")
    limits.add_argument("--bandwidth", metavar="RATE",
                        help="network rate both ways, e.g. 1mbit: tc tbf on the veth (needs --network bridge)")


def add_run_only_options(parser: argparse.ArgumentParser) -> None:
    """The options of `run` that describe a run, not a container."""
    parser.add_argument("--name", metavar="NAME",
                        help="name the container: labkit exec NAME and labkit ps find it while it runs")
    add_terminal_options(parser)
    parser.add_argument("--rm", action="store_true",
                        help="remove the container when it exits (accepted: labkit always does)")
    parser.add_argument("--restart", metavar="no|on-failure[:N]", default="no",
                        help="start the command again when it exits non-zero, at most N times")


def network_mode(text: str) -> str:
    """--network's value: one of container.NETWORKS."""
    if text == "host":
        raise argparse.ArgumentTypeError("labkit has no host mode: to share the host's network, "
                                         "leave net out of --ns")
    if text not in container.NETWORKS:
        raise argparse.ArgumentTypeError(f"unknown network mode {text!r}: choose from "
                                         f"{', '.join(container.NETWORKS)}")
    return text


def add_terminal_options(parser: argparse.ArgumentParser) -> None:
    """-i and -t, as docker run/exec spell them."""
    parser.add_argument("-i", "--interactive", action="store_true",
                        help="keep stdin attached (it always is: accepted as docker spells -it)")
    parser.add_argument("-t", "--tty", action="store_true",
                        help="give the command a terminal (a pty, its controlling terminal); "
                             "your terminal is in raw mode meanwhile")


def seccomp_profile(options: list[str]) -> str | None:
    """--security-opt values -> ContainerSpec.seccomp_profile (None: labkit's filter)."""
    profile = None
    for opt in options:
        key, sep, value = opt.replace(":", "=", 1).partition("=") if opt.startswith("no-new") \
            else opt.partition("=")
        if key == "no-new-privileges" and value in ("", "true"):
            continue                            # caps.Capabilities sets no_new_privs always
        if key == "seccomp" and value:
            profile = value if value == container.UNCONFINED else os.path.abspath(value)
            continue
        raise UsageError(f"unknown --security-opt {opt!r}",
                         "labkit takes seccomp=unconfined, seccomp=PROFILE.json and no-new-privileges")
    return profile


def env_item(item: str, where: str) -> dict[str, str]:
    """``K=V`` -> {K: V}; ``K`` -> {K: labkit's own value} or {} when labkit has none (as docker)."""
    name, sep, value = item.partition("=")
    if not name or name != name.strip() or any(c.isspace() for c in name):
        raise UsageError(f"{where}: bad variable name {name!r}", "write K=V, a name without spaces before =")
    if not sep:
        return {name: os.environ[name]} if name in os.environ else {}
    return {name: value}


def read_env_file(path: str) -> dict[str, str]:
    """docker's --env-file format: K=V lines (V taken as is, no quotes removed),
    K alone (labkit's own value), # comments and blank lines."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read --env-file {path}: {getattr(e, 'strerror', None) or e}",
                         "give a readable UTF-8 file of K=V lines") from None
    env: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.lstrip()
        if line and not line.startswith("#"):
            env.update(env_item(line, f"--env-file {path} line {number}"))
    return env


def env_of(args: argparse.Namespace) -> dict[str, str]:
    """The variables --env-file and -e give, in that order (so -e wins, as docker)."""
    env: dict[str, str] = {}
    for path in args.env_file:
        env.update(read_env_file(path))
    for item in args.env:
        env.update(env_item(item, f"-e {item!r}"))
    return env


def spec_for(args: argparse.Namespace) -> container.ContainerSpec:
    """The ContainerSpec that `run`'s (or `trace`'s) options describe."""
    name = getattr(args, "name", None)
    return container.ContainerSpec(
        rootfs_dir=args.rootfs, name=name, hostname=args.hostname,
        namespaces=container.parse_namespaces(args.ns), userns=args.userns,
        uid_map=args.uid_map or [], gid_map=args.gid_map or [], volumes=args.volume,
        tmpfs=args.tmpfs, read_only=args.read_only, network=args.network, ip=args.ip,
        bandwidth=args.bandwidth, cpus=args.cpus, memory=args.memory,
        pids="max" if args.pids == "-1" else args.pids, io_read_bps=args.io_read_bps,
        io_write_bps=args.io_write_bps, cap_add=args.cap_add, cap_drop=args.cap_drop,
        seccomp_profile=seccomp_profile(args.security_opt), env=env_of(args),
        workdir=args.workdir, user=args.user, init=args.init,
        group=None if name else f"run-{os.getpid()}")


def container_for(args: argparse.Namespace) -> container.Container:
    """The Container that `run`'s options describe (every value checked here)."""
    return container.Container(spec_for(args))


def primitives_for(args: argparse.Namespace) -> list[Primitive]:
    """The primitives a `run` asks for, in launch order (container.py composes them)."""
    return container_for(args).primitives()


# Docker's image reference grammar (github.com/distribution/reference, its
# README's grammar): [DOMAIN[:PORT]/]NAME[/NAME...][:TAG][@DIGEST], NAME lowercase.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
IMAGE_REFERENCE = (rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
                   r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")


IMAGE_HINT = ("labkit runs a root filesystem (--rootfs DIR), not an image: "
              "`labkit rootfs build DIR --from TARBALL` imports the files of a `docker export`")


def image_hint(command: str, rootfs_given: bool) -> LabkitError | None:
    """The error for a command the container did not find (execve(2): ENOENT)
    that reads as an image name; None when it does not.

    An image reference with a tag, a digest or a path (busybox:latest,
    docker.io/library/alpine) names no command: exit 125, the hint. A bare
    word (ubuntu) may be either, so it stays "command not found", exit 127 as
    docker's for a missing command, with the hint added when the default root
    filesystem was used (a user of --rootfs knows what labkit runs).
    """
    if not re.fullmatch(IMAGE_REFERENCE, command):
        return None
    if any(c in command for c in ":/@"):
        return UsageError(f"{command} looks like an image name and is no command in the container",
                          IMAGE_HINT)
    if rootfs_given:
        return None
    return CommandNotFoundError(f"{command}: command not found in the container",
                                f"check its name; if it is an image: {IMAGE_HINT}")


def command_of(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command given", "name one, e.g. labkit run -- /bin/sh -c 'echo hi'")
    return cmd


def _on_signal(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through `with`: kill, reap, release


# Options that need host root even with a user namespace, and why: user_namespaces(7),
# its capabilities cover only what it owns, not the host's cgroups, links or bridge.
NEEDS_HOST_ROOT = {
    "memory": "--memory writes the host's cgroup files", "cpus": "--cpus writes the host's cgroup files",
    "pids": "--pids-limit writes the host's cgroup files",
    "io_read_bps": "--io-read-bps writes the host's cgroup files",
    "io_write_bps": "--io-write-bps writes the host's cgroup files",
    "bandwidth": "--bandwidth changes a link on the host", "ip": "--ip configures the host's bridge labkit0",
    "network": "--network bridge plugs a link into the host's bridge labkit0",
}


def check_rootless(args: argparse.Namespace) -> None:
    """Without root, refuse (in one clear line) what only host root may do."""
    if os.geteuid() == 0:
        return
    if not (args.userns or "user" in container.parse_namespaces(args.ns)):
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
        with box, hint_for_images(argv[0], args.rootfs is not None):   # fresh primitives each start
            status = attached(lambda **io: box.start(argv, **io), args.tty)
            report_oom(box.prims)                       # before release() removes the cgroup
        if not policy.should_restart(status, restarts):
            return status
        restarts += 1
        print(f"labkit: exit status {status}; {policy.describe(restarts)}", file=sys.stderr)


@contextlib.contextmanager
def hint_for_images(command: str, rootfs_given: bool) -> Iterator[None]:
    """``command`` not found, when it reads as an image name, gets image_hint's error."""
    try:
        yield
    except CommandNotFoundError:
        hint = image_hint(command, rootfs_given)
        if hint is None:
            raise
        raise hint from None


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
    """`labkit trace`: run like `run`, then print the timeline on stderr (as strace
    does), or to the file -o names."""
    from . import trace
    from .seccomp import Seccomp

    if os.geteuid() != 0:
        raise NotRootError()
    if args.buffer_kb < 1:
        raise UsageError(f"--buffer-kb {args.buffer_kb} is not a size", "give kilobytes per CPU, e.g. 16384")
    argv = command_of(args)
    prims = primitives_for(args)
    with output_file(args.output) as out:
        tracer = trace.Trace(buffer_kb=args.buffer_kb,       # the filter: to name the rule of a denial
                             seccomp_filter=next((p for p in prims if isinstance(p, Seccomp)), None),
                             syscalls=[name for name in args.syscalls.split(",") if name])
        prims.append(tracer)                        # last: joins after, releases before the others
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _on_signal)
        with hint_for_images(argv[0], args.rootfs is not None), spawn(argv, prims, capture=False) as proc:
            tracer.observe(proc.pid)
            returncode = proc.wait()
        records = tracer.records if args.all else tracer.command_records()
        if args.json:
            import json

            for r in records:
                print(json.dumps(r.as_dict(tracer)), file=out)
            print(json.dumps({"summary": trace.summary_line(tracer), "lost": tracer.lost}), file=out)
        else:
            print(trace.format_timeline(tracer, records, quiet=args.quiet_checks, fold=not args.no_fold),
                  file=out)
    return exit_status(returncode or 0)


@contextlib.contextmanager
def output_file(path: str | None) -> Iterator[IO[str]]:
    """The file -o names, opened (truncated) before the command runs, as strace -o
    does; stderr without -o. A file this run created is removed if it fails."""
    if path is None:
        yield sys.stderr
        return
    existed = os.path.exists(path)
    try:
        f = open(path, "w")
    except OSError as e:
        raise UsageError(f"cannot write -o {path}: {e.strerror}", "give a file in a writable directory") from None
    try:
        with f:
            yield f
    except BaseException:
        if not existed:
            os.unlink(path)
        raise


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
        raise UsageError(f"no solution notebook in {NOTEBOOK_DIR} (the notebooks ship with the repository, "
                         "not with `pip install .`)", "name the solution notebooks, or run from a checkout")
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
        raise UsageError(f"--solutions {solutions} is not a directory (the notebooks ship with the repository, "
                         "not with `pip install .`)", "give the folder of the solution notebooks")
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
    """The command line; bare `labkit` prints the help and exits 0, as bare `docker` does."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv:
            build_parser().print_help()
            return 0
        args = parse_args(argv)
        return COMMANDS[args.command](args)
    except LabkitError as e:
        print(f"labkit: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:             # `labkit doctor | head -1`: the reader left, as SIGPIPE would end us
        return 128 + signal.SIGPIPE


def entry() -> NoReturn:
    """Run the command and exit with its status, skipping Python's own shutdown:
    by then every primitive is released (the `with` blocks have run), and tearing
    down each imported module would only delay the exit (benchmarks/container_startup.py)."""
    status = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:                  # the reader of a pipe left (as above)
            pass
    os._exit(status)


if __name__ == "__main__":
    entry()
