"""What the kernel checked: tracing a container through tracefs.

The kernel instruments itself. Its tracepoints fire on every syscall entry and
exit (``raw_syscalls:sys_enter``/``sys_exit``), on every capability check
(``capability:cap_capable``: which capability, in which user namespace,
granted or not), on cgroup changes (``cgroup:*``), on an OOM kill
(``oom:mark_victim``), on signals (``signal:signal_generate``/``deliver``) and
on fork, exec and exit (``sched:sched_process_*``). tracefs (Documentation/
trace/ftrace.rst, events.rst) exposes them as files:

- ``mkdir TRACEFS/instances/NAME`` (tracefs is usually mounted at
  /sys/kernel/tracing; see ``tracefs()`` for a host without it) makes a private ring buffer with
  its own event switches, so this trace does not disturb anyone else's;
- ``set_event_pid`` restricts events to the listed PIDs, and the option
  ``event-fork`` adds each child they fork: written before the container's
  first execve, the trace sees every process of the container from its start;
- ``buffer_size_kb`` sizes the per-CPU buffer; ``per_cpu/cpuN/stats`` counts
  the events that did not fit (``overrun``, ``dropped events``), so a loss is
  reported, never silent.

Where the ``capability:cap_capable`` tracepoint is missing (it came in Linux
6.14, include/trace/events/capability.h; the lab VMs run 6.1 and 6.12),
a kprobe and a kretprobe on the kernel function ``cap_capable`` stand in,
through ``kprobe_events`` (Documentation/trace/kprobetrace.rst). A kprobe
fires only where the function itself is entered: on the lab VMs it saw none of
the overcommit checks that the tracepoint shows on mmap and fork, which call
cap_capable directly in security/commoncap.c (inlined there: our inference);
checks made through security_capable() (ns_capable, capable) it sees. Where neither
exists, ``Trace.capability_source`` is None and the views say so.

Evidence, not guesses: each ``Record`` says which check decided the call
(``deciding``, a kind of checks.KINDS) and how that is known (``evidence``):
OBSERVED when an event of the call shows it (a capability check refused right
before EPERM, oom:mark_victim, a sys_exit without sys_enter from the seccomp
filter labkit loaded, the pids cgroup's refusal counter having moved),
INFERRED when it is labkit's reading of the errno, UNKNOWN otherwise; ``basis``
names what it rests on. Capability checks that decide nothing (overcommit's
root reserve, overlayfs acting as its mounter) are kept apart and explained
(checks.NON_DECIDING); the order of the checks per syscall is checks.ORDER.

Use ``Trace`` as the last primitive of a launch, so that its ``join()`` runs
after the others' (the container is in its cgroup), and its ``release()``,
which reads the buffer, runs before theirs (the cgroup still exists).
"""

from __future__ import annotations

import errno as errno_names
import itertools
import os
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from . import kernel, mountinfo, tracebuf
from .errors import LabkitError, NotRootError, UsageError
from .spawn import Primitive
from .syscalls import syscall_name, syscall_number
if TYPE_CHECKING:
    from . import checks
    from .seccomp import Seccomp
from .tracebuf import Event


# The events a trace records, as tracefs names them: events/<system>/<event>.
EVENTS = (
    "raw_syscalls/sys_enter", "raw_syscalls/sys_exit",
    "capability/cap_capable",
    "cgroup",                                   # the whole system: cgroup:*
    "oom/mark_victim",
    "signal/signal_generate", "signal/signal_deliver",
    "sched/sched_process_fork", "sched/sched_process_exec", "sched/sched_process_exit",
)

# Events of cgroup:* that say how the kernel locks its statistics, not what it checked.
QUIET = ("cgroup/cgroup_rstat_locked", "cgroup/cgroup_rstat_unlock",
         "cgroup/cgroup_rstat_lock_contended")


def single_events(events_dir: str) -> list[str]:
    """EVENTS that exist under ``events_dir``, a whole system (cgroup) as its
    events but QUIET, so that each is switched on once and none off: switching
    cgroup:* on and QUIET off again made the next set_event_pid write, in the
    container's start, several times slower (measured by benchmarks/trace_overhead.py,
    variant "floor, QUIET off"; why, in the kernel, was not established)."""
    found = []
    for event in EVENTS:
        if "/" not in event and os.path.isdir(f"{events_dir}/{event}"):
            found += sorted(f"{event}/{e}" for e in os.listdir(f"{events_dir}/{event}")
                            if os.path.isdir(f"{events_dir}/{event}/{e}") and f"{event}/{e}" not in QUIET)
        elif os.path.exists(f"{events_dir}/{event}/enable"):
            found.append(event)
    return found


CAPABILITIES = kernel.CAPABILITIES        # capability number -> name

# Events kept outside any traced call when --syscalls selects calls: the
# process's life and its end, not the checks of calls nobody asked for.
OUTSIDE_CALLS = ("sched_process_fork", "sched_process_exec", "sched_process_exit",
                 "signal_generate", "signal_deliver", "mark_victim")

# The kernel function of each syscall, per architecture: SYSCALL_DEFINE makes
# __x64_sys_NAME on x86_64 (arch/x86/include/asm/syscall_wrapper.h) and
# __arm64_sys_NAME on arm64 (arch/arm64/include/asm/syscall_wrapper.h).
SYSCALL_SYMBOL = {"x86_64": "__x64_sys_{}", "aarch64": "__arm64_sys_{}"}

# A table lookup, not a kernel event: the namespace type whose resource each
# syscall names, after the list of what each type isolates in namespaces(7).
NAMESPACE_OF: dict[str, str] = {
    **dict.fromkeys(("sethostname", "setdomainname", "uname"), "uts"),
    **dict.fromkeys(("msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semctl",
                     "semtimedop", "shmget", "shmat", "shmdt", "shmctl", "mq_open", "mq_unlink",
                     "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr"), "ipc"),
    **dict.fromkeys(("socket", "socketpair", "bind", "listen", "connect", "accept", "accept4",
                     "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
                     "getsockname", "getpeername", "setsockopt", "getsockopt", "shutdown"), "net"),
    **dict.fromkeys(("getpid", "getppid", "gettid", "kill", "tkill", "tgkill", "clone", "clone3",
                     "fork", "vfork", "wait4", "waitid", "getpgid", "setpgid", "getsid",
                     "pidfd_open", "pidfd_send_signal", "rt_sigqueueinfo"), "pid"),
    **dict.fromkeys(("open", "openat", "openat2", "creat", "stat", "lstat", "newfstatat", "statx",
                     "access", "faccessat", "faccessat2", "readlink", "readlinkat", "execve",
                     "execveat", "chdir", "chroot", "mkdir", "mkdirat", "rmdir", "unlink",
                     "unlinkat", "rename", "renameat", "renameat2", "link", "linkat", "symlink",
                     "symlinkat", "chmod", "fchmodat", "chown", "lchown", "fchownat", "truncate",
                     "statfs", "mknod", "mknodat", "mount", "umount2", "pivot_root", "open_tree",
                     "move_mount", "fsopen", "fsmount", "mount_setattr"), "mnt"),
    **dict.fromkeys(("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
                     "setfsuid", "setfsgid", "setgroups", "getuid", "geteuid", "getgid",
                     "getegid", "getresuid", "getresgid", "capget", "capset", "setns",
                     "unshare"), "user"),
}

# The cgroup controller whose limit a syscall can run into (cgroups(7)). Only
# the pids controller refuses a syscall: cgroup_can_fork -> pids_can_fork
# answers EAGAIN and counts "max" in pids.events (kernel/cgroup/pids.c). The
# memory controller refuses nothing at mmap or brk: memory is charged when a
# page is first touched (the page fault, mm/memcontrol.c), and over the limit
# the OOM killer ends the process (oom:mark_victim) instead of failing a call.
CONTROLLER_OF: dict[str, str] = {
    **dict.fromkeys(("clone", "clone3", "fork", "vfork"), "pids"),
    **dict.fromkeys(("mmap", "brk", "mremap"), "memory"),
}
REFUSED_BY = {"pids": ("EAGAIN", "pids_max")}   # controller -> (errno, its cgroups.EVENTS counter)

# Each controller's limit and usage files: (v1 limit, v1 usage, v2 limit, v2 usage).
CGROUP_FILES: dict[str, tuple[str, str, str, str]] = {
    "pids": ("pids.max", "pids.current", "pids.max", "pids.current"),
    "memory": ("memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.max", "memory.peak"),
}
NO_LIMIT_V1 = 0x7FFFFFFFFFFFF000            # memory.limit_in_bytes when unlimited (PAGE_COUNTER_MAX)

# A fork's child starts inside the kernel and leaves it through sys_exit (ret 0)
# without a sys_enter of its own: its record's args say so. A call the seccomp
# filter refused leaves the same trace, with ret -errno: the filter runs in
# syscall_trace_enter() before the sys_enter tracepoint, while sys_exit still
# fires on the way out (kernel/entry/common.c, syscall_exit_work).
CHILD_RETURN = "(no sys_enter: a new child returning from fork, a call seccomp refused, or a lost event)"

# Errnos the kernel uses inside and never returns to user space; sys_exit shows
# them when a signal interrupted the call, which the kernel then restarts or
# turns into EINTR (include/linux/errno.h; kernel/signal.c, arch/x86/kernel/signal.c).
KERNEL_ERRNOS = {512: "ERESTARTSYS", 513: "ERESTARTNOINTR", 514: "ERESTARTNOHAND",
                 515: "ENOIOCTLCMD", 516: "ERESTART_RESTARTBLOCK"}

# How sure a record's deciding step is.
OBSERVED = "observed"       # a kernel event in this call shows the check that decided
INFERRED = "inferred"       # labkit's reading of the errno; no event shows it
UNKNOWN = "unknown"         # neither

# A capability that overrides a file's mode bits: when it is refused right
# before EACCES, the mode bits refused and nothing overrode them
# (fs/namei.c, generic_permission -> capable_wrt_inode_uidgid).
DAC_OVERRIDES = ("CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER")

_counter = itertools.count()
# The names a Trace gives its tracefs instance and its kprobe group: the
# tracing process's PID and a counter. `labkit cleanup` removes only these.
INSTANCE_NAME = re.compile(r"labkit-[0-9]+-[0-9]+")
KPROBE_GROUP = re.compile(r"labkit_[0-9]+_[0-9]+")
_host_user_ns: dict[int, str | None] = {}   # our user namespace's inode -> its cap_capable pointer


def describe(e: Event, trace: "Trace") -> str:
    """One readable phrase for a kernel event inside a record."""
    f = e.fields
    if e.name == "cap_capable":
        cap = int(f.get("cap", -1))
        capname = CAPABILITIES[cap] if 0 <= cap < len(CAPABILITIES) else f"cap {cap}"
        verdict = "refused" if int(f.get("ret", 0)) else "granted"
        return f"{capname} checked in {trace.user_ns_of(f)}: {verdict}"
    if e.name in ("signal_generate", "signal_deliver"):
        return f"{e.name} sig={f.get('sig')}" + (f" to host PID {f['pid']}" if "pid" in f else "")
    if e.name == "mark_victim":
        return f"OOM killer chose host PID {f.get('pid')}"
    return f"{e.name} " + " ".join(f"{k}={v}" for k, v in f.items())


@dataclass(slots=True)                     # slots: a trace can hold 100,000s of records
class Record:
    """One syscall of the container (or one kernel event outside any syscall)."""

    pid: int
    syscall: str
    start: float
    ret: int | None = None
    end: float | None = None
    raw_args: tuple[int, ...] | list[str] = ()  # sys_enter's six numbers, or [CHILD_RETURN]
    events: list[Event] = field(default_factory=list)
    namespace: str | None = None            # type, from the namespaces(7) table
    ns_inode: int | None = None             # the container's real namespace of that type
    ns_owner: str = ""                      # "container" (its own) or "host" (shared)
    cgroup: dict[str, object] | None = None  # controller, limit, usage
    verdict: str = ""
    deciding: str = "execute"               # the check that decided: a kind of checks.KINDS
    evidence: str = "observed"              # "observed" (an event shows it), "inferred" or "unknown"
    basis: str = ""                         # what the evidence is, or what the inference rests on
    phase: str = "labkit"                   # "labkit" setup, or "command" from its execve on

    @property
    def args(self) -> list[str]:
        """The arguments as sys_enter printed them (hex), or [CHILD_RETURN]."""
        return [a if isinstance(a, str) else f"{a:x}" for a in self.raw_args]

    @property
    def errno(self) -> str | None:
        """The errno name of a failed call (ret is -errno), else None."""
        if self.ret is None or self.ret >= 0 or self.ret < -4095:
            return None
        return errno_names.errorcode.get(-self.ret) or KERNEL_ERRNOS.get(-self.ret, str(-self.ret))

    def result(self) -> str:
        if self.ret is None:
            return "(no return)"
        if self.errno:
            return f"-1 {self.errno}"
        return hex(self.ret) if self.ret > 0xFFFFFF else str(self.ret)    # an address

    def deciding_event(self) -> Event | None:
        """The event an OBSERVED capability or permission step rests on: the last check."""
        if self.evidence != OBSERVED or self.deciding not in ("capability", "permission"):
            return None
        caps = [e for e in self.events if e.name == "cap_capable"]
        return caps[-1] if caps else None

    def loads_seccomp(self) -> bool:
        """Did this call install a seccomp filter? prctl(PR_SET_SECCOMP,
        SECCOMP_MODE_FILTER, ...) or seccomp(SECCOMP_SET_MODE_FILTER, ...)
        returning 0 (seccomp(2))."""
        first = [a for a in self.raw_args[:2] if isinstance(a, int)]
        return self.ret == 0 and (
            (self.syscall == "prctl" and first == [kernel.PR_SET_SECCOMP, kernel.SECCOMP_MODE_FILTER])
            or (self.syscall == "seccomp" and first[:1] == [kernel.SECCOMP_SET_MODE_FILTER]))

    def checks(self, trace: "Trace") -> list[str]:
        """The events of this call, in words, but the checks that deny nothing."""
        deciding = self.deciding_event()
        return [describe(e, trace) for e in self.events if _quiet(self, e, deciding) is None]

    def quiet_checks(self, trace: "Trace") -> list[dict[str, str]]:
        """Capability checks of this call that decide nothing, each with why it happens."""
        found, deciding = [], self.deciding_event()
        for e in self.events:
            why = _quiet(self, e, deciding)
            if why is not None:
                found.append({"check": describe(e, trace), "why": why.why, "source": why.source})
        return found

    def as_dict(self, trace: "Trace") -> dict[str, object]:
        """The JSON form: what the events show (checks, verdict) and how the deciding
        step is known (evidence: observed, inferred or unknown, and its basis)."""
        return {
            "t": round(self.start - trace.t0, 6), "pid": self.pid, "phase": self.phase,
            "syscall": self.syscall, "ret": self.ret, "errno": self.errno,
            "namespace": None if self.namespace is None else {
                "type": self.namespace, "inode": self.ns_inode, "owner": self.ns_owner,
                "source": "namespaces(7) table"},
            "cgroup": self.cgroup, "checks": self.checks(trace),
            "quiet_checks": self.quiet_checks(trace),
            "verdict": self.verdict, "deciding_step": self.deciding,
            "evidence": self.evidence, "basis": self.basis,
            "candidates": self.candidates(),
        }

    def candidates(self) -> list[dict[str, str]]:
        """For a failure no event explains: the checks of this call's family that
        answer its errno, in the kernel's order (checks.ORDER): what could have
        decided, a reading of the source, not an observation."""
        from . import checks

        if self.errno is None or self.evidence == OBSERVED:
            return []
        return [{"kind": c.kind, "what": c.what, "source": c.source}
                for c in checks.order(self.syscall) if self.errno in c.denies_with]


def _quiet(rec: Record, e: Event, deciding: Event | None) -> "checks.Quiet | None":
    """checks.Quiet when ``e`` is a capability check that decides nothing in ``rec``
    (``deciding``: rec.deciding_event(), read once a record by the callers)."""
    from . import checks

    if e.name != "cap_capable" or e is deciding:
        return None
    cap = int(e.fields.get("cap", -1))
    if not 0 <= cap < len(CAPABILITIES):
        return None
    return checks.quiet(rec.syscall, CAPABILITIES[cap], granted=not int(e.fields.get("ret", 0)))


_private_root: str | None = None


def tracefs() -> str:
    """The root of tracefs as this process reaches it; raise if the kernel has none.

    The kernel exposes tracing only through tracefs (Documentation/trace/ftrace.rst),
    and every mount of it shows the same files: one superblock, so the same
    instances and kprobe events. Where the host has it mounted (usually
    /sys/kernel/tracing), labkit uses that mount. Where it does not, labkit
    leaves the host's mount table alone: it makes a detached mount
    (kernel.detached_mount: fsopen/fsmount, needs CAP_SYS_ADMIN) that only this
    process sees, reached as /proc/self/fd/N, and that goes away with it.
    """
    global _private_root
    if os.geteuid() != 0:
        raise NotRootError()
    for point in mountinfo.mount_points(mountinfo.read(), "tracefs"):
        if os.path.isdir(f"{point}/instances"):
            return point
    if _private_root is None:
        try:
            fd = kernel.detached_mount("tracefs")
        except OSError as e:
            raise LabkitError(f"this kernel gives no tracefs ({e.strerror})",
                              "use a kernel built with CONFIG_FTRACE (see `labkit doctor`)") from None
        _private_root = f"/proc/self/fd/{fd}"
    return _private_root


TRACEPOINT_SOURCE = "tracepoint capability:cap_capable"
KPROBE_SOURCE = "kprobe on cap_capable"


def capability_source(root: str) -> str | None:
    """Where capability checks can come from under tracefs ``root``: the
    tracepoint (Linux 6.14 and later), else a kprobe on cap_capable (a kernel
    with CONFIG_KPROBE_EVENTS has kprobe_events), else None."""
    if os.path.isdir(f"{root}/events/capability/cap_capable"):
        return TRACEPOINT_SOURCE
    return KPROBE_SOURCE if os.path.exists(f"{root}/kprobe_events") else None


def instances() -> str:
    """The directory whose subdirectories are tracing instances (mkdir makes one)."""
    return f"{tracefs()}/instances"


def _write(path: str, text: str) -> None:
    """Write a tracefs control file (O_TRUNC: replace, as `echo X > file` does)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _append(path: str, text: str) -> None:
    """Add lines to a tracefs list such as kprobe_events (O_APPEND: keep the others,
    as `echo X >> file` does). Not Python's open(path, "a"): that seeks to the end
    first, and these files answer lseek(SEEK_END) with EINVAL (fs/seq_file.c,
    seq_lseek). Each line is one write: the kernel parses a write as a command."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        for line in text.splitlines(keepends=True):
            os.write(fd, line.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class Trace(Primitive):
    """A private tracefs instance that follows the container from before its execve."""

    name = "trace"
    flags = 0

    def __init__(self, buffer_kb: int = 16384, seccomp_filter: "Seccomp | None" = None,
                 syscalls: Sequence[str] = ()) -> None:
        self.buffer_kb = buffer_kb
        self.filter = seccomp_filter                   # the launch's filter, to name a denial's rule
        self.cgroup_counts: dict[str, int] = {}        # cgroups.EVENTS counter -> value at the end
        self.root = ""                                  # tracefs, as tracefs() found it
        self.dir: str | None = None
        self.kprobe_group: str | None = None
        self.kprobe_events: list[str] = []              # the events this trace defined in its group
        self.syscalls = tuple(syscalls)                 # only these, when given (--syscalls)
        for name in self.syscalls:
            try:
                syscall_number(name)
            except KeyError:
                raise UsageError(f"--syscalls: {name!r} is no syscall of {os.uname().machine}",
                                 "give syscall names as in syscalls(2), comma-separated, "
                                 "e.g. sethostname,mount") from None
        self.syscall_source = "tracepoints raw_syscalls:sys_enter/sys_exit"
        self.capability_source: str | None = None   # tracepoint, kprobe, or None
        self.host_user_ns: str | None = None        # the cap_capable pointer of labkit's user ns
        self.host_ns: dict[str, int] = {}
        self.container_ns: dict[str, int] = {}
        self.cgroup_dirs: dict[str, tuple[str, str]] = {}   # controller -> (version, dir)
        self.cgroup_limits: dict[str, dict[str, object]] = {}
        self.records: list[Record] = []
        self.events_total = 0
        self.lost = 0
        self.t0 = 0.0
        self._collected = False

    # --- the four hooks ---------------------------------------------------

    def prepare(self) -> None:
        """Make the instance, size its buffer, switch the events on (tracing off)."""
        self.root = tracefs()
        self.dir = f"{self.root}/instances/labkit-{os.getpid()}-{next(_counter)}"
        os.mkdir(self.dir)
        _write(f"{self.dir}/tracing_on", "0")
        _write(f"{self.dir}/buffer_size_kb", str(self.buffer_kb))
        _write(f"{self.dir}/options/overwrite", "0")    # when full, drop new events (counted)
        _write(f"{self.dir}/options/event-fork", "1")   # children join set_event_pid
        self.capability_source = self._capability_events()
        if self.capability_source:
            own = kernel.ns_inode("self", "user")       # the same for every trace: once a process
            if own not in _host_user_ns:
                _host_user_ns[own] = self._calibrate_user_ns()
            self.host_user_ns = _host_user_ns[own]
        left_off = self._select_syscalls() if self.syscalls else []
        for event in single_events(f"{self.dir}/events"):
            if event not in left_off:
                _write(f"{self.dir}/events/{event}/enable", "1")
        self.host_ns = {ns: kernel.ns_inode("self", ns) for ns in kernel.NAMESPACES}

    def join(self, pid: int) -> None:
        """Follow child A (already unshared, not yet exec'd), and what it forks."""
        assert self.dir is not None
        self.container_ns = {ns: kernel.ns_inode(pid, ns) for ns in kernel.NAMESPACES}
        # A new PID namespace holds child A's children, not A, and has no inode
        # to show before the first of them is born (pid_namespaces(7)): observe().
        self.container_ns.pop("pid")
        self.cgroup_dirs = _cgroup_dirs(pid)
        self.cgroup_limits = {c: {"limit": self._cgroup_value(c, 0)} for c in CGROUP_FILES}
        _write(f"{self.dir}/set_event_pid", str(pid))
        _write(f"{self.dir}/tracing_on", "1")

    def observe(self, pid: int) -> None:
        """Read the PID namespace and the cgroup of the running container's ``pid``
        (``Process.pid``): PID 1 moved itself into its cgroup in enter(), while
        child A, which join() saw, stays in the launcher's.

        A command that already exited has no namespaces left to read: the PID
        namespace's inode then stays unknown (the trace itself is complete).
        """
        try:
            self.container_ns["pid"] = kernel.ns_inode(pid, "pid")
            self.cgroup_dirs = _cgroup_dirs(pid)
        except (FileNotFoundError, ProcessLookupError):
            return
        self.cgroup_limits = {c: {"limit": self._cgroup_value(c, 0)} for c in CGROUP_FILES}

    def release(self) -> None:
        """Read the trace (once), then remove the instance and any kprobe; safe twice."""
        try:
            if self.dir is not None and not self._collected:
                self.collect()
        finally:
            self._remove()

    # --- reading ----------------------------------------------------------

    def collect(self) -> list[Record]:
        """Stop tracing, count lost events, and turn the buffer into records."""
        assert self.dir is not None
        _write(f"{self.dir}/tracing_on", "0")
        self._collected = True
        for cpu in os.listdir(f"{self.dir}/per_cpu"):
            stats = _read(f"{self.dir}/per_cpu/{cpu}/stats")
            for key in ("overrun", "dropped events"):
                m = re.search(rf"^{key}: (\d+)", stats, re.M)
                self.lost += int(m.group(1)) if m else 0
        # Read after the command, not while it runs: a reader thread draining
        # the binary buffers during the run saved little of the CLI's time but
        # competed with the traced command for the CPUs, which then ran further
        # from the raw-tracepoint floor (benchmarks/trace_overhead.py measured both).
        items = tracebuf.items(self.dir)
        moved = _attached_dirs([tracebuf.event(i) for i in items if i[2] == "cgroup_attach_task"])
        if moved:                       # the kernel's word beats what observe() could read
            self.cgroup_dirs = moved
            self.cgroup_limits = {c: {"limit": self._cgroup_value(c, 0)} for c in CGROUP_FILES}
        for c in self.cgroup_limits:
            self.cgroup_limits[c]["usage"] = self._cgroup_value(c, 1)
        self.cgroup_counts = self._cgroup_counts()
        with tracebuf.no_gc():                  # 100k syscalls make 600k objects: see no_gc
            self.records = self._records(items)
        return self.records

    def _records(self, items: list[tracebuf.Item]) -> list[Record]:
        """Pair sys_enter with sys_exit per task; put other events inside the call.
        One pass over the events (tracebuf.Item: the syscalls' numbers become
        records without an Event each), then one over the records."""
        self.events_total = len(items)
        self.t0 = items[0][0] if items else 0.0
        records: list[Record] = []
        append = records.append
        open_calls: dict[int, Record] = {}
        since: dict[int, float] = {}            # PID -> when it began running the command
        names: dict[int, str] = {}              # NR -> name, looked up once a number
        probes = {f"{kind}_{name}": (kind, name) for name in self.syscalls for kind in ("enter", "exit")}
        for item in items:
            ts, pid, name, payload = item
            if name == "sys_enter":             # payload: NR, arg0..arg5
                nr = payload[0]
                open_calls[pid] = rec = Record(pid, names.get(nr) or names.setdefault(nr, syscall_name(nr)),
                                               ts, None, None, payload[1:])
                append(rec)
            elif name == "sys_exit":            # payload: NR, ret
                nr, ret = payload
                rec = open_calls.pop(pid, None)
                if rec is None:                 # a new child's return from fork, or a lost sys_enter
                    rec = Record(pid, names.get(nr) or names.setdefault(nr, syscall_name(nr)), ts,
                                 raw_args=[CHILD_RETURN])
                    append(rec)
                rec.ret, rec.end = ret, ts
            elif probes and name in probes:     # --syscalls through kprobes: the call's own function
                kind, call = probes[name]
                if kind == "enter":
                    open_calls[pid] = rec = Record(pid, call, ts)
                    append(rec)
                elif pid in open_calls:
                    rec = open_calls.pop(pid)
                    rec.ret, rec.end = int(payload["ret"]), ts
            elif name == "cap_capable_ret" and pid in open_calls:
                caps = [x for x in open_calls[pid].events if x.name == "cap_capable"]
                if caps:
                    caps[-1].fields["ret"] = payload.get("ret", "0")
            else:
                e = tracebuf.event(item)
                if name == "sched_process_exec":
                    since.setdefault(pid, open_calls[pid].start if pid in open_calls else ts)
                if name == "sched_process_fork" and pid in since:
                    since.setdefault(int(e.fields["child_pid"]), ts)
                if pid in open_calls:
                    open_calls[pid].events.append(e)
                elif not self.syscalls or name in OUTSIDE_CALLS:   # --syscalls: only those calls' checks
                    append(Record(pid, f"[{name}]", ts, events=[e]))
        self.records = records
        plain: dict[tuple[str, int], tuple[object, ...]] = {}    # (syscall, ret) -> annotation
        for rec in records:
            if rec.pid in since and rec.start >= since[rec.pid]:
                rec.phase = "command"
            ret = rec.ret
            if rec.events or ret is None or -4096 < ret < 0:
                self._annotate(rec)
                continue
            # Most calls: no event inside, no error. Their annotation depends on
            # the syscall and its return value only: made once, shared.
            key = (rec.syscall, ret)
            known = plain.get(key)
            if known is None:
                self._annotate(rec)
                known = plain[key] = (rec.namespace, rec.ns_inode, rec.ns_owner, rec.cgroup,
                                      rec.verdict, rec.deciding, rec.evidence, rec.basis)
            else:
                (rec.namespace, rec.ns_inode, rec.ns_owner, rec.cgroup,
                 rec.verdict, rec.deciding, rec.evidence, rec.basis) = known
        return records

    def _annotate(self, rec: Record) -> None:
        """Namespace, cgroup, verdict and deciding step of one record."""
        rec.namespace = NAMESPACE_OF.get(rec.syscall)
        if rec.namespace:
            rec.ns_inode = self.container_ns.get(rec.namespace)
            rec.ns_owner = "host" if rec.ns_inode == self.host_ns.get(rec.namespace) else "container"
        controller = CONTROLLER_OF.get(rec.syscall)
        if any(e.name == "mark_victim" for e in rec.events):
            controller = "memory"
        if controller and controller in self.cgroup_dirs:
            rec.cgroup = {"controller": controller, **self.cgroup_limits.get(controller, {})}
        rec.verdict, rec.deciding, rec.evidence, rec.basis = self._verdict(rec)

    def _verdict(self, rec: Record) -> tuple[str, str, str, str]:
        """(verdict, deciding step, evidence, basis) of one record.

        A step is OBSERVED only when an event of this call shows it: an OOM
        victim (oom:mark_victim), a capability check refused right before an
        EPERM or EACCES exit, a sys_exit with no sys_enter from the seccomp
        filter labkit loaded, or the cgroup's own counter of refusals having
        moved (pids.events "max"). Anything else is labkit's INFERRED reading
        of the errno, with the basis named, or UNKNOWN.
        """
        if not rec.events and rec.ret is not None and (rec.ret >= 0 or rec.ret < -4095):
            return "allowed", "execute", OBSERVED, f"sys_exit returned {rec.result()}"   # most calls
        names = {e.name for e in rec.events}
        if "mark_victim" in names:                  # the memory cgroup's OOM killer chose it
            return "killed by the OOM killer", "cgroup", OBSERVED, "oom:mark_victim"
        if rec.syscall.startswith("["):
            return "kernel event", "execute", OBSERVED, f"{rec.syscall[1:-1]} outside any syscall"
        if rec.ret is None:
            if "sched_process_exit" in names:
                return "exited", "execute", OBSERVED, "sched:sched_process_exit, no sys_exit"
            return "killed", "execute", UNKNOWN, "no sys_exit: the process ended inside the call"
        err = rec.errno
        if err is None:
            return "allowed", "execute", OBSERVED, f"sys_exit returned {rec.result()}"
        if rec.raw_args == [CHILD_RETURN]:
            rule = self._seccomp_rule(rec)
            if rule:
                return f"denied {err}", "seccomp", OBSERVED, rule
        caps = [e for e in rec.events if e.name == "cap_capable"]
        if caps and int(caps[-1].fields.get("ret", 0)) and err in ("EPERM", "EACCES"):
            capname = describe(caps[-1], self).split()[0]
            step = "permission" if err == "EACCES" and capname in DAC_OVERRIDES else "capability"
            return f"denied {err}", step, OBSERVED, f"cap_capable {capname} refused right before the {err} exit"
        controller = rec.cgroup["controller"] if rec.cgroup else None
        if controller in REFUSED_BY and REFUSED_BY[str(controller)][0] == err:
            counter = REFUSED_BY[str(controller)][1]
            moved = self.cgroup_counts.get(counter, 0)
            if moved:
                return (f"denied {err}", "cgroup", OBSERVED,
                        f"the {controller} cgroup counted {moved} refusal(s) during the trace ({counter})")
            return f"failed {err}", "execute", UNKNOWN, f"errno {err}; the {controller} cgroup counted no refusal"
        if err in ("EPERM", "EACCES") and self.capability_source is None:
            return f"denied {err}", "capability", INFERRED, f"errno {err}; capability checks not traceable here"
        if err in ("EPERM", "EACCES"):
            return f"denied {err}", "execute", UNKNOWN, f"errno {err}; no refused check in the events"
        return f"failed {err}", "execute", INFERRED, f"errno {err}; no event: the call itself failed"

    def _seccomp_rule(self, rec: Record) -> str:
        """The rule of the filter labkit loaded that answers this call with its
        errno, when the trace saw the filter loaded; else ''."""
        if self.filter is None or rec.ret is None or not any(r.loads_seccomp() for r in self.records):
            return ""
        rule = self.filter.explain(rec.syscall, rec.ret)
        return f"seccomp: {rule}" if rule else ""

    def user_ns_of(self, fields: dict[str, str]) -> str:
        """Name the user namespace a cap_capable event checked against (target_ns:
        the namespace owning the object; capable_ns is where the walk stopped)."""
        ns = fields.get("target_ns")
        if ns is None or self.host_user_ns is None:
            return "an unknown user namespace"
        if ns == self.host_user_ns:
            return "the host's user namespace"
        if self.container_ns.get("user") != self.host_ns.get("user"):
            return "the container's user namespace"
        return "another user namespace"

    def command_records(self) -> list[Record]:
        """The records from the container command's execve on (labkit's setup left out)."""
        return [r for r in self.records if r.phase == "command"]

    # --- helpers ----------------------------------------------------------

    def _capability_events(self) -> str | None:
        """Where capability checks come from on this kernel: tracepoint, kprobe, or None."""
        assert self.dir is not None
        source = capability_source(self.root)
        if source != KPROBE_SOURCE:
            return source
        # int cap_capable(const struct cred *cred, struct user_namespace *targ_ns, int cap, ...)
        self._add_kprobes({"cap_capable": "p cap_capable target_ns=$arg2 cap=$arg3:s32",
                           "cap_capable_ret": "r cap_capable ret=$retval:s32"})
        return KPROBE_SOURCE

    def _add_kprobes(self, probes: dict[str, str]) -> None:
        """Define kprobe events (name -> "p|r SYMBOL FETCHARGS", kprobetrace.rst)
        in this trace's group labkit_PID_N, and switch the group on in the instance."""
        assert self.dir is not None
        if self.kprobe_group is None:
            self.kprobe_group = f"labkit_{os.getpid()}_{next(_counter)}"
        for name, probe in probes.items():
            kind, rest = probe.split(" ", 1)
            _append(f"{self.root}/kprobe_events", f"{kind}:{self.kprobe_group}/{name} {rest}\n")
            self.kprobe_events.append(name)
        _write(f"{self.dir}/events/{self.kprobe_group}/enable", "1")

    def _select_syscalls(self) -> list[str]:
        """Trace only the syscalls of ``self.syscalls``; returns the EVENTS to leave off.

        With kprobes: an entry probe and a return probe on each syscall's own
        kernel function (SYSCALL_SYMBOL), and the raw_syscalls tracepoints stay
        off, so every other syscall keeps the kernel's fast path (enabling a
        syscall tracepoint sets SYSCALL_WORK_SYSCALL_TRACEPOINT on the task:
        kernel/trace/trace_syscalls.c, kernel/entry/common.c). A call that the
        seccomp filter refuses never reaches that function: it is not seen.
        Without kprobes: a filter on the tracepoints' ``id`` (events.rst, "Event
        filtering"): fewer events, but every syscall still takes the slow path.
        """
        assert self.dir is not None
        machine = os.uname().machine
        if os.path.exists(f"{self.root}/kprobe_events") and machine in SYSCALL_SYMBOL:
            probes = {}
            for name in self.syscalls:
                symbol = SYSCALL_SYMBOL[machine].format(name)
                probes[f"enter_{name}"] = f"p {symbol}"
                probes[f"exit_{name}"] = f"r {symbol} ret=$retval:s64"
            try:
                self._add_kprobes(probes)
            except OSError as e:
                raise LabkitError(f"--syscalls: this kernel refused a probe on {symbol}: {e.strerror}",
                                  "check the name (syscalls(2)); some calls have another kernel function") from None
            self.syscall_source = (f"kprobes on {SYSCALL_SYMBOL[machine].format('NAME')} "
                                   "(the other calls stay on the fast path)")
            return ["raw_syscalls/sys_enter", "raw_syscalls/sys_exit"]
        condition = " || ".join(f"id == {syscall_number(name)}" for name in self.syscalls)
        for event in ("sys_enter", "sys_exit"):
            _write(f"{self.dir}/events/raw_syscalls/{event}/filter", condition)
        self.syscall_source = "raw_syscalls filtered on id (every syscall still takes the slow path)"
        return []

    def _calibrate_user_ns(self) -> str | None:
        """The pointer cap_capable prints for labkit's own (the host's) user namespace.

        Joining the UTS namespace we are already in changes nothing, but
        setns(2) checks CAP_SYS_ADMIN in our user namespace: one known event.
        It is caught by an event filter on our thread, not by set_event_pid:
        clearing a PID list that has entries waits for a grace period
        (tracepoint_synchronize_unregister in __ftrace_clear_event_pids,
        kernel/trace/trace_events.c), while join()'s first write to an empty
        list does not. Newer kernels also free a removed filter later instead
        of waiting (try_delay_free_filter, kernel/trace/trace_events_filter.c);
        older ones wait there as they do for the PID list.
        """
        assert self.dir is not None
        events = f"{self.dir}/events/{self.kprobe_group or 'capability'}"    # the system: every event in it
        _write(f"{events}/filter", f"common_pid == {threading.get_native_id()}")
        _write(f"{events}/enable", "1")
        _write(f"{self.dir}/tracing_on", "1")
        fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
        try:
            kernel.setns(fd, kernel.CLONE_NEWUTS)
        finally:
            os.close(fd)
            _write(f"{self.dir}/tracing_on", "0")
            _write(f"{events}/filter", "0")
        caps = [e for e in tracebuf.read(self.dir) if e.name == "cap_capable"]   # and empty it
        return caps[-1].fields.get("target_ns") if caps else None

    def _cgroup_value(self, controller: str, column: int) -> int | None:
        """The limit (column 0) or usage (1) of the container's cgroup; None = no limit."""
        if controller not in self.cgroup_dirs:
            return None
        version, directory = self.cgroup_dirs[controller]
        name = CGROUP_FILES[controller][column + (2 if version == "v2" else 0)]
        try:
            text = _read(os.path.join(directory, name)).strip()
        except OSError:
            return None
        if text == "max" or (column == 0 and text.isdigit() and int(text) >= NO_LIMIT_V1):
            return None
        return int(text) if text.isdigit() else None

    def _cgroup_counts(self) -> dict[str, int]:
        """The refusal counters (cgroups.EVENTS) of the container's groups. labkit
        made these groups for this container, so they started at 0."""
        from .cgroups import EVENTS

        counts = {}
        for counter in EVENTS:
            if counter.controller in self.cgroup_dirs:
                version, directory = self.cgroup_dirs[counter.controller]
                value = counter.value(version, lambda file, d=directory: _read(os.path.join(d, file)))
                if value is not None:
                    counts[counter.name] = value
        return counts

    def _remove(self) -> None:
        if self.dir is not None:
            try:
                os.rmdir(self.dir)
            except FileNotFoundError:
                pass
            self.dir = None
        if self.kprobe_group is not None:
            _append(f"{self.root}/kprobe_events",
                    "".join(f"-:{self.kprobe_group}/{name}\n" for name in self.kprobe_events))
            self.kprobe_group, self.kprobe_events = None, []


def _attached_dirs(events: list[Event]) -> dict[str, tuple[str, str]]:
    """controller -> (v1|v2, directory) of the groups the traced processes moved
    into, from the kernel's ``cgroup:cgroup_attach_task`` events (the last move
    per hierarchy wins). Evidence, not a reading of /proc: the container's PID 1
    moves itself in enter(), and /proc/PID/cgroup of a process that already
    exited shows nothing (or "/" on v1 while it exits). ``dst_root`` is the
    hierarchy's ID, the first field of a /proc/PID/cgroup line (0 for v2), and
    ``dst_path`` the group's full path (include/trace/events/cgroup.h)."""
    from .cgroups import layout

    names = {line.split(":")[0]: line.split(":")[1] for line in layout.cgroup_lines("self")}
    moves = {e.fields["dst_root"]: e.fields["dst_path"] for e in events
             if e.name == "cgroup_attach_task" and e.fields.get("dst_root") in names}
    return _controller_dirs([f"{root}:{names[root]}:{path}" for root, path in moves.items()])


def _cgroup_dirs(pid: int) -> dict[str, tuple[str, str]]:
    """controller -> (v1|v2, directory) of ``pid``'s cgroup, for the controllers
    of CGROUP_FILES: /proc/PID/cgroup resolved by cgroups.layout, the module that
    knows where each hierarchy is mounted (cgroups(7)). On v2 the one directory
    serves each controller the v2 root offers. /proc/PID/cgroup is read first:
    the process may be about to exit (layout.cgroup_lines)."""
    from .cgroups import layout

    return _controller_dirs(layout.cgroup_lines(pid))


def _controller_dirs(lines: list[str]) -> dict[str, tuple[str, str]]:
    """/proc/PID/cgroup lines -> controller -> (v1|v2, directory), for CGROUP_FILES."""
    from .cgroups import layout

    found: dict[str, tuple[str, str]] = {}
    for hierarchy, directory in layout.read().dirs(lines):
        for c in CGROUP_FILES:
            if c in hierarchy.controllers:
                found.setdefault(c, (hierarchy.version, directory))
    return found


MARKS = {OBSERVED: "<-", INFERRED: "<~", UNKNOWN: "<?"}
LEGEND = ("<- decided there, an event shows it;  <~ labkit's inference from the errno, "
          "no event shows it;  <? unknown")


FOLD_LONGEST = 4   # the longest block of calls format_timeline(fold=True) looks for repeats of


def format_timeline(trace: Trace, records: list[Record] | None = None, quiet: bool = False,
                    fold: bool = False) -> str:
    """One line per syscall: time, pid, call, result, verdict, how the deciding
    step is known (MARKS), and what the kernel checked. The checks that deny
    nothing are counted, or listed with why when ``quiet`` is true. With
    ``fold``, a block of up to FOLD_LONGEST successful calls without events
    that repeats (dd's read, write, read, write...) is printed once, followed
    by a line that says how many times it came and when the last one started."""
    rows = trace.command_records() if records is None else records
    lines = [f"{'time':>9}  {'pid':>7}  {'syscall':<18} {'result':<14} {'verdict':<28} what the kernel checked"]
    t0 = trace.t0
    keys: list[tuple[object, ...] | None] = [   # what makes two lines alike; None: never folded
        None if r.events or r.verdict != "allowed" else
        (r.pid, r.syscall, r.ret, r.namespace, r.ns_owner,
         r.cgroup and (r.cgroup["controller"], r.cgroup.get("limit"))) for r in rows]
    plain: dict[tuple[object, ...], str] = {}   # the rest of a line without events, made once
    i = 0
    while i < len(rows):
        period, times = _repeats(keys, i) if fold else (1, 1)
        for key, r in zip(keys[i:i + period], rows[i:i + period]):
            if key is None:
                rest = _line_rest(trace, r, quiet)
            elif (rest := plain.get(key)) is None:
                rest = plain[key] = _line_rest(trace, r, quiet)
            lines.append(f"{(r.start - t0) * 1000:8.3f}ms  {rest}")
        if times > 1:
            last = rows[i + period * times - 1].start
            what = "the call above" if period == 1 else f"the {period} calls above"
            lines.append(f"{'':>9}  {'':>7}  ... {what}, {times} times in all, the last at "
                         f"{(last - t0) * 1000:.3f}ms")
        i += period * times
    lines.append(LEGEND)
    lines.append(summary_line(trace))
    return "\n".join(lines)


def _repeats(keys: list[tuple[object, ...] | None], i: int) -> tuple[int, int]:
    """The shortest block of lines starting at ``i`` that comes again right
    after itself, and how many times in a row: (length, times), or (1, 1)."""
    for period in range(1, FOLD_LONGEST + 1):
        block = keys[i:i + period]
        if len(block) < period or None in block:
            break
        times = 1
        while keys[i + times * period:i + (times + 1) * period] == block:
            times += 1
        if times > 1:
            return period, times
    return 1, 1


def _line_rest(trace: Trace, r: Record, quiet: bool) -> str:
    """A timeline line after its time: pid, call, result, verdict, what was checked."""
    return (f"{r.pid:>7}  {r.syscall:<18} {r.result():<14} {_verdict_text(r):<28} "
            f"{_checked(trace, r, quiet)}")


def _verdict_text(r: Record) -> str:
    """The verdict, and where the call failed or was decided, marked with its evidence."""
    if r.errno or r.deciding != "execute":
        return f"{r.verdict} {MARKS[r.evidence]} {r.deciding}"
    return r.verdict


def _checked(trace: Trace, r: Record, quiet: bool) -> str:
    """The timeline's last column: the namespace (table), the cgroup limit, the
    events of the call, and its checks that deny nothing (counted, or with why)."""
    checked = []
    if r.namespace:
        checked.append(f"{r.namespace} ns ({r.ns_owner}'s)")
    if r.cgroup:
        checked.append(f"{r.cgroup['controller']} cgroup limit {r.cgroup.get('limit') or 'none'}")
    if not r.events:
        return "; ".join(checked)
    checked += _counted(r.checks(trace))
    if r.evidence == OBSERVED and r.deciding in ("seccomp", "cgroup"):
        checked.append(r.basis)
    others = r.quiet_checks(trace)
    if others and quiet:
        checked += [f"[denies nothing: {c}: {o['why']}]" for c, o in
                    zip(_counted([o["check"] for o in others]), _unique(others))]
    elif others:
        checked.append(f"(+{len(others)} that deny nothing; --quiet-checks shows them)")
    return "; ".join(checked)


def _counted(items: list[str]) -> list[str]:
    """Each distinct item once, with (xN) when it came N times."""
    return [c if items.count(c) == 1 else f"{c} (x{items.count(c)})" for c in dict.fromkeys(items)]


def _unique(quiet: list[dict[str, str]]) -> list[dict[str, str]]:
    return list({q["check"]: q for q in quiet}.values())


def summary_line(trace: Trace) -> str:
    cap = trace.capability_source or "capability checks not traceable on this kernel (no tracepoint, no kprobes)"
    calls = f"; only {','.join(trace.syscalls)}, from {trace.syscall_source}" if trace.syscalls else ""
    full = (f" (the {trace.buffer_kb} KB buffer of a CPU filled: run again with --buffer-kb "
            f"{buffer_for_all(trace)}, or Trace(buffer_kb=...))") if trace.lost else ""
    return (f"{len(trace.records)} records from {trace.events_total} kernel events; "
            f"lost events: {trace.lost}{full}; capability checks from: {cap}{calls}")


def buffer_for_all(trace: Trace) -> int:
    """A per-CPU buffer size (KB) that would have held the lost events too: the
    size scaled by (kept + lost) / kept, with a quarter more for the page
    headers and the next run's variation, in whole MB."""
    kept = max(trace.events_total, 1)
    kb = trace.buffer_kb * (kept + trace.lost) / kept * 1.25
    return -(-int(kb) // 1024) * 1024
