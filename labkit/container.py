"""Container: every primitive composed from one spec, as runc and Docker compose them.

::

    from labkit.container import Container

    c = Container(hostname="box", memory="64M", pids=64)   # checks the spec, starts nothing
    r = c.run(["hostname"])              # a fresh container runs it as PID 1, then is removed
    r.returncode, r.stdout               # (0, "box\\n")

    with Container(hostname="web", net="bridge", cpus=0.5) as c:
        p = c.start(["httpd", "-f", "-p", "80"])   # runs in the background (a spawn.Process)
        c.exec(["wget", "-qO-", "http://127.0.0.1/"])  # another process inside, like docker exec
        c.address                        # "10.88.0.2": the lab address it got (bridge only)
    # leaving the block kills what still runs and releases everything

A container is the launch pipeline of spawn.py run with these primitives, in
this order (``primitives()``):

1. ``Cgroup`` (limits, always: Docker-less defaults of ``DEFAULT_LIMITS``) and the
   device rules: a ``DeviceCgroup`` where the host has the v1 devices controller,
   else a ``DeviceProgram`` (BPF) attached to the Cgroup's v2 group before anyone
   is inside; PID 1 moves itself into them first,
2. ``UserNamespace`` (only with ``userns=True``): it owns everything after it,
3. ``CgroupNamespace``: PID 1 unshares it once inside its cgroup, so "/" is its own,
4. PID, UTS, IPC, network namespaces, then ``MountNamespace`` (overlay on the
   busybox image, /proc /dev /sys, runc's masked and read-only paths, pivot_root),
5. ``Bandwidth`` (tc on the veth), ``Terminal`` (a pty as controlling terminal),
6. ``Capabilities``: Docker's 14 and no_new_privs, then ``Seccomp``: every
   earlier step makes calls the filter denies; with ``init=True`` (--init),
   ``Init`` last: PID 1 forks the command and stays as its init (init.py).

``exec()`` runs a process in the running container through the same pipeline
with ``JoinNamespaces`` instead of new namespaces (setns(2), the user
namespace first), then the same capabilities, no_new_privs and filter.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from typing import Iterable, Sequence

from . import (bandwidth, caps, cgroupns, cgroups, devices, ipc, mount, net, nsenter, pid, rootfs,
               seccomp, terminal, user, uts)
from .errors import LabkitError, UsageError
from .init import Init
from .spawn import DEFAULT_ENV, Primitive, Process, Result, spawn

# The namespaces a container gets by default: all but user (as runc's default spec).
DEFAULT_NAMESPACES = ("pid", "uts", "ipc", "mount", "net", "cgroup")
ALL_NAMESPACES = ("pid", "uts", "ipc", "mount", "net", "user", "cgroup")
# Limits every container gets unless told otherwise: a fork bomb or a memory bomb
# ends at them, not at the host's own limits.
DEFAULT_LIMITS = {"memory": "512M", "pids": 512}
STATE_DIR = "/run/labkit/containers"     # named containers: NAME/state.json
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"

# What an option needs, as (option set?, namespace needed, what, what to do).
REQUIREMENTS = (
    (lambda c: c.hostname is not None, "uts", "--hostname needs a UTS namespace", "add uts to --ns"),
    (lambda c: c.net != "none", "net", "--net {net} needs a network namespace", "add net to --ns"),
    (lambda c: bool(c.volumes) or c.rootfs_given, "mount", "--rootfs and --volume need a mount namespace",
     "add mount to --ns"),
)
_sequence = itertools.count(1)


class Container:
    """A container spec; ``run()``/``start()`` make it real, ``exec()`` joins it.

    Keyword arguments are the ``labkit run`` options: ``rootfs`` (default: the
    built-in busybox image), ``name``, ``hostname``, ``namespaces``, ``volumes``
    ("HOST:CTR[:ro]"), ``tmpfs``, ``net`` ("none" or "bridge"), ``ip``, ``userns``,
    ``uid_map``/``gid_map`` ("INSIDE:OUTSIDE:COUNT"), ``cpus``, ``memory``,
    ``pids`` (None: ``DEFAULT_LIMITS``; "max": none), ``io_read_bps``,
    ``io_write_bps`` ("[DEV:]RATE"), ``bandwidth``,
    ``cap_add``, ``cap_drop``, ``seccomp``, ``device_rules``, ``overlay``,
    ``group`` (the cgroup's name under labkit/), ``init``. Bad values raise UsageError here.
    """

    def __init__(self, rootfs: str | None = None, *, name: str | None = None,
                 hostname: str | None = None, namespaces: Iterable[str] = DEFAULT_NAMESPACES,
                 volumes: Iterable[str | mount.Volume] = (), tmpfs: Iterable[str] = (),
                 net: str = "none", ip: str | None = None, userns: bool = False,
                 uid_map: Sequence[str] | None = None, gid_map: Sequence[str] | None = None,
                 cpus: str | float | None = None, memory: str | int | None = None,
                 pids: str | int | None = None, io_read_bps: str | None = None,
                 io_write_bps: str | None = None, bandwidth: str | None = None,
                 cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (), seccomp: bool = True,
                 device_rules: bool | None = None, overlay: bool = True, group: str | None = None,
                 env: dict[str, str] | None = None, init: bool = False) -> None:
        if name is not None and (not name or len(name) > 64 or set(name) - set(NAME_CHARS)):
            raise UsageError(f"bad container name {name!r}", "use 1-64 letters, digits, '.', '_', '-'")
        self.name = name
        self.rootfs_given = rootfs is not None
        self.rootfs = rootfs
        self.hostname = hostname
        self.namespaces = _check_namespaces(namespaces, userns)
        self.volumes = [mount.parse_volume(v) if isinstance(v, str) else v for v in volumes]
        self.tmpfs = list(tmpfs)
        if net not in NETWORKS:
            raise UsageError(f"unknown network mode {net!r}", f"choose from {', '.join(NETWORKS)}")
        self.net, self.ip, self.bandwidth = net, ip, bandwidth
        if ip is not None and net != "bridge":
            raise UsageError("--ip needs --net bridge", "add --net bridge, or leave out --ip")
        if bandwidth is not None and net != "bridge":
            raise UsageError("--bandwidth needs --net bridge", "add --net bridge: the rate is set on its veth")
        for is_set, needed, what, todo in REQUIREMENTS:
            if is_set(self) and needed not in self.namespaces:
                raise UsageError(what.format(net=net), todo)
        self.uid_map = [user.parse_map(m, "--uid-map") for m in uid_map or ()]
        self.gid_map = [user.parse_map(m, "--gid-map") for m in gid_map or ()]
        if (self.uid_map or self.gid_map) and "user" not in self.namespaces:
            raise UsageError("--uid-map/--gid-map need a user namespace", "add --userns")
        # None: the default limit (as root; without root labkit cannot write the
        # host's cgroup files); "max": no limit at all.
        defaults = DEFAULT_LIMITS if os.geteuid() == 0 else {}
        self.limits = {"cpu": cpus, "memory": defaults.get("memory") if memory is None else memory,
                       "pids": defaults.get("pids") if pids is None else pids}
        self.io = {"io_read_bps": io_read_bps, "io_write_bps": io_write_bps}
        self.keep = caps.resolve(cap_add, cap_drop)
        self.cap_add, self.cap_drop = list(cap_add), list(cap_drop)
        self.seccomp = seccomp
        if device_rules is None:
            device_rules = devices.available() and os.geteuid() == 0
            self.keep = without_mknod_unless_asked(self.keep, cap_add, device_rules)
        elif device_rules and not devices.available():
            raise LabkitError("no device control on this host: neither a cgroup v1 devices hierarchy "
                              "nor a cgroup2 mount for a BPF device program",
                              "mount one (see `labkit doctor`), or run without device rules")
        self.device_rules = device_rules
        self.overlay = overlay
        self.init = init                    # --init: PID 1 is labkit's init (init.py), the command its child
        self.group = group or name or f"run-{os.getpid()}-{next(_sequence)}"
        self.env = dict(env or DEFAULT_ENV)
        self.process: Process | None = None
        self.address: str | None = None
        self.prims: list[Primitive] = []
        self.primitives(tty=False)          # build them once: every value is checked now

    # -- composition ------------------------------------------------------

    def primitives(self, *, tty: bool = False) -> list[Primitive]:
        """Fresh primitives for one start, in launch order (module docstring)."""
        names = self.namespaces
        prims: list[Primitive] = []
        group = self._cgroup()
        if group is not None:
            prims.append(group)
        if self.device_rules:
            prims.append(self._device_rules(group))
        if "user" in names:
            prims.append(user.UserNamespace(self.uid_map or None, self.gid_map or None))
        if "cgroup" in names:
            prims.append(cgroupns.CgroupNamespace())
        if "pid" in names:
            prims.append(pid.PidNamespace(mount_proc="mount" not in names))
        if "uts" in names:
            prims.append(uts.UtsNamespace(self.hostname))
        if "ipc" in names:
            prims.append(ipc.IpcNamespace())
        network = NETWORKS[self.net](self) if "net" in names else None
        if network is not None:
            prims.append(network)
        if "mount" in names:
            prims.append(mount.MountNamespace(self._rootfs(), self.volumes, self.tmpfs,
                                              overlay=self.overlay, owner=self._owner()))
        if self.bandwidth is not None:
            prims.append(bandwidth.Bandwidth(self.bandwidth, network))
        if tty:
            prims.append(terminal.Terminal())
        prims.append(caps.Capabilities(self.keep))
        if self.seccomp:
            prims.append(seccomp.Seccomp())
        if self.init:
            prims.append(Init())       # after the filter: the command inherits all of the above
        return prims

    def _cgroup(self) -> cgroups.Cgroup | None:
        """The container's cgroup; None without root and without limits."""
        values = {k: v for k, v in self.limits.items() if v is not None and v != "max"}
        device = None
        for key, text in self.io.items():
            if text is not None:
                dev, values[key] = cgroups.split_device(text)
                if device is not None and dev != device:
                    raise UsageError("--io-read-bps and --io-write-bps name different devices",
                                     "limit one device per run")
                device = dev
        if not values and os.geteuid() != 0:
            return None
        return cgroups.Cgroup(self.group, io_device=device, **values)

    def _device_rules(self, group: cgroups.Cgroup | None) -> Primitive:
        """The v1 devices group where the host has that controller (as before,
        also on a hybrid host), else the BPF device program on the container's
        own v2 group, which ``group`` makes and removes."""
        if devices.mechanism() == "v1":
            return devices.DeviceCgroup(self.group)
        if group is None or group.v2 is None:
            raise LabkitError("device rules on cgroup v2 need the container's own v2 group, "
                              "and labkit makes none on this host",
                              "run as root, or run without device rules")
        return devices.DeviceProgram(group.v2.path)

    def _rootfs(self) -> str:
        return rootfs.check_rootfs(self.rootfs) if self.rootfs else rootfs.default_rootfs()

    def _owner(self) -> tuple[int, int] | None:
        """The host uid/gid of the user namespace's root (it owns the overlay's upper layer)."""
        if "user" not in self.namespaces:
            return None
        ns = user.UserNamespace(self.uid_map or None, self.gid_map or None)
        return user.to_host(ns.uid_map, ns.uid), user.to_host(ns.gid_map, ns.gid)

    # -- life cycle -------------------------------------------------------

    def start(self, argv: Sequence[str], *, capture: bool = True,
              stdio: tuple[int, int, int] | None = None, tty: bool = False) -> Process:
        """Start ``argv`` as the container's PID 1 and return its Process (running)."""
        if self.process is not None and self.process.returncode is None:
            raise UsageError(f"container {self.name or self.group} is running already",
                             "stop() it first, or make another Container")
        if self.name is not None and self.name in running():
            raise UsageError(f"a container named {self.name} is running already",
                             "choose another --name (see labkit ps)")
        self.prims = self.primitives(tty=tty)
        self.process = spawn(argv, self.prims, env=self.env, capture=capture, stdio=stdio)
        self.address = next((str(p.address) for p in self.prims
                             if isinstance(p, net.BridgeNetwork)), None)
        if self.name is not None:
            try:
                self._save_state()
            except BaseException:
                self.stop()
                raise
        return self.process

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for PID 1 to exit; None if ``timeout`` seconds passed first."""
        if self.process is None:
            raise UsageError("the container was not started", "call start() first")
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Kill PID 1 if it still runs (its namespace's other processes die with
        it, pid_namespaces(7)), reap it, release every primitive. Safe twice."""
        try:
            if self.process is not None:
                self.process.close()
        finally:
            if self.name is not None:
                shutil.rmtree(os.path.join(STATE_DIR, self.name), ignore_errors=True)

    def run(self, argv: Sequence[str], timeout: float | None = None) -> Result:
        """Run ``argv`` as PID 1 of a fresh container to the end; return its status and output."""
        process = self.start(argv)
        try:
            return process.finish(timeout)
        finally:
            self.stop()

    def exec(self, argv: Sequence[str], timeout: float | None = None) -> Result:
        """Run ``argv`` inside the running container (docker exec); return status and output."""
        with self.exec_start(argv) as proc:
            return proc.finish(timeout)

    def exec_start(self, argv: Sequence[str], *, capture: bool = True,
                   stdio: tuple[int, int, int] | None = None, tty: bool = False) -> Process:
        """Start ``argv`` in the running container's namespaces and cgroup; return its Process."""
        host_pid = self.pid()
        prims: list[Primitive] = [nsenter.JoinNamespaces(host_pid)]
        if tty:
            prims.append(terminal.Terminal())
        prims.append(caps.Capabilities(self.keep))
        if self.seccomp:
            prims.append(seccomp.Seccomp())
        return spawn(argv, prims, env=self.env, capture=capture, stdio=stdio)

    def pid(self) -> int:
        """The host PID of the running container's PID 1."""
        if self.process is None or self.process.poll() is not None:
            raise LabkitError(f"container {self.name or self.group} is not running",
                              "start() it first (labkit run --name NAME ...)")
        return self.process.pid

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- named containers (labkit run --name, exec, ps) --------------------

    def spec(self) -> dict[str, object]:
        """The options that made this container, to rebuild it (JSON-safe)."""
        return {"rootfs": self.rootfs, "name": self.name, "hostname": self.hostname,
                "namespaces": list(self.namespaces), "net": self.net, "ip": self.ip,
                "userns": "user" in self.namespaces, "cap_add": self.cap_add,
                "cap_drop": self.cap_drop, "seccomp": self.seccomp,
                **{k if k != "cpu" else "cpus": v for k, v in self.limits.items()}}

    def _save_state(self) -> None:
        assert self.process is not None and self.name is not None
        directory = os.path.join(STATE_DIR, self.name)
        os.makedirs(STATE_DIR, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            raise UsageError(f"a container named {self.name} is running already",
                             "choose another --name (see labkit ps)") from None
        state = {"pid": self.process.pid, "start_time": start_time(self.process.pid),
                 "argv": self.process.argv, "spec": self.spec(), "address": self.address}
        with open(os.path.join(directory, "state.json"), "w") as f:
            json.dump(state, f)


class Attached(Container):
    """A named container started by another process (``labkit run --name``), found
    from its state file: ``exec()`` joins it by its host PID."""

    def __init__(self, name: str, state: dict) -> None:
        spec = dict(state["spec"])
        super().__init__(**{k: v for k, v in spec.items() if k not in ("rootfs", "name")},
                         name=None, group=f"attached-{name}")
        self.name = name
        self.host_pid = int(state["pid"])
        self.argv = state.get("argv", [])
        self.address = state.get("address")

    def pid(self) -> int:
        return self.host_pid

    def stop(self) -> None:
        pass                                   # the process that started it stops it


def start_time(host_pid: int) -> int:
    """Field 22 of /proc/PID/stat (proc(5)): with the PID, it names one process for good."""
    with open(f"/proc/{host_pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def running() -> dict[str, dict]:
    """The named containers that run now, by name; stale state (its process gone,
    or the PID reused by another process) is removed on the way."""
    found = {}
    if not os.path.isdir(STATE_DIR):
        return found
    for name in sorted(os.listdir(STATE_DIR)):
        directory = os.path.join(STATE_DIR, name)
        try:
            with open(os.path.join(directory, "state.json")) as f:
                state = json.load(f)
            alive = start_time(int(state["pid"])) == state["start_time"]
        except (FileNotFoundError, ValueError, KeyError, ProcessLookupError):
            alive = False
        if alive:
            found[name] = state
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return found


def attach(name: str) -> Attached:
    """The running container called ``name``; LabkitError if there is none."""
    state = running().get(name)
    if state is None:
        raise LabkitError(f"no running container named {name}",
                          "see `labkit ps`; start one with labkit run --name NAME ...")
    return Attached(name, state)


def _check_namespaces(names: Iterable[str], userns: bool) -> tuple[str, ...]:
    found = [n.strip() for n in names if n.strip()]
    for n in found:
        if n not in ALL_NAMESPACES:
            raise UsageError(f"unknown namespace {n!r} in --ns", f"choose from {', '.join(ALL_NAMESPACES)}")
    if userns and "user" not in found:
        found.append("user")
    return tuple(dict.fromkeys(found))


def without_mknod_unless_asked(keep: list[str], cap_add: Iterable[str], device_rules: bool) -> list[str]:
    """The capabilities to keep when labkit chose the device rules itself.

    With device rules (the v1 devices controller, or on cgroup v2 the BPF
    device program: devices.py), a node made with mknod(2) for a host disk
    cannot be opened, so CAP_MKNOD, one of Docker's 14, stays, as with runc on
    either version. Without them (not root, or a host with neither mechanism)
    such a node could be opened: the container then does not get CAP_MKNOD,
    unless --cap-add asked for it, and mknod(2) of a device fails with EPERM
    (capabilities(7), mknod(2)).
    """
    asked = any(n.upper() == "ALL" or caps.canonical(n) == "CAP_MKNOD" for n in cap_add)
    if device_rules or asked:
        return keep
    return [n for n in keep if n != "CAP_MKNOD"]


# --net mode -> the network namespace primitive that makes it (net.py).
NETWORKS = {
    "none": lambda c: net.NetNamespace(),
    "bridge": lambda c: net.BridgeNetwork(c.ip),
}
