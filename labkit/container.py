"""Container: every primitive composed from one spec, as runc and Docker compose them.

::

    from labkit.container import Container, ContainerSpec

    c = Container(hostname="box", memory="64M", pids=64)   # checks the spec, starts nothing
    c = Container(ContainerSpec(hostname="box", memory="64M", pids=64))   # the same
    r = c.run(["hostname"])              # a fresh container runs it as PID 1, then is removed
    r.returncode, r.stdout               # (0, "box\\n")

    with Container(hostname="web", network="bridge", cpus=0.5) as c:
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
   (``workdir``, made if missing, and ``read_only``: the root turns read-only last),
5. ``Bandwidth`` (tc on the veth), ``Terminal`` (a pty as controlling terminal),
6. ``Capabilities``: Docker's 14, the switch to ``user``, no_new_privs; then
   ``Seccomp``: every earlier step makes calls the filter denies; with ``init``
   (--init), ``Init`` last: PID 1 forks the command and stays as its init (init.py).

``exec()`` runs a process in the running container through the same pipeline
with ``JoinNamespaces`` instead of new namespaces (setns(2), the user
namespace first), then the same working directory, user, capabilities,
no_new_privs and filter, and the container's environment.
"""

from __future__ import annotations

import dataclasses
import itertools
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
UNCONFINED = "unconfined"                # seccomp_profile: no filter (docker's seccomp=unconfined)

# What an option needs, as (option set?, namespace needed, what, what to do).
REQUIREMENTS = (
    (lambda s: s.hostname is not None, "uts", "--hostname needs a UTS namespace", "add uts to --ns"),
    (lambda s: s.network != "none", "net", "--network {network} needs a network namespace",
     "add net to --ns"),
    (lambda s: bool(s.volumes or s.tmpfs) or s.read_only or s.rootfs_dir is not None, "mount",
     "--rootfs, --volume, --tmpfs and --read-only need a mount namespace", "add mount to --ns"),
)
_sequence = itertools.count(1)


def parse_namespaces(names: str | Sequence[str] | None) -> tuple[str, ...]:
    """The namespace list ``--ns`` gives ("pid,uts" or a sequence of names), checked,
    in the order given, without duplicates; None: ``DEFAULT_NAMESPACES``."""
    if names is None:
        return DEFAULT_NAMESPACES
    found = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    for n in found:
        if n not in ALL_NAMESPACES:
            raise UsageError(f"unknown namespace {n!r} in --ns", f"choose from {', '.join(ALL_NAMESPACES)}")
    return tuple(dict.fromkeys(found))


def parse_user(text: str) -> tuple[int, int]:
    """``UID[:GID]`` (numbers) -> (uid, gid). Without a GID the group is 0, as
    docker gives a user that the image's /etc/passwd does not name."""
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or not (gid.isdigit() or not gid) or int(uid) > user.ID_MAX \
            or int(gid or 0) > user.ID_MAX:
        raise UsageError(f"--user {text!r} is not UID[:GID]",
                         "give numbers, e.g. --user 1000 or --user 1000:1000 (labkit reads no /etc/passwd)")
    return int(uid), int(gid or 0)


def check_env(env: dict[str, str]) -> dict[str, str]:
    """Variables as execve(2) takes them: NAME=VALUE strings, so a name holds no '='
    (nor NUL, which ends a C string), and is not empty."""
    for name, value in env.items():
        if not name or "=" in name or "\0" in name + value:
            raise UsageError(f"bad environment variable {name!r}",
                             "give NAME=VALUE, NAME without '=' (environ(7))")
    return dict(env)


@dataclasses.dataclass
class ContainerSpec:
    """What a container is made of: the ``labkit run`` options, JSON-safe values only.

    ``rootfs_dir`` (default: the built-in busybox root filesystem), ``name``,
    ``hostname``, ``namespaces`` (names, or "pid,uts,..."), ``userns`` (adds
    the user namespace), ``uid_map``/``gid_map`` ("INSIDE:OUTSIDE:COUNT"),
    ``volumes`` ("HOST:CTR[:ro]" or ``mount.Volume``), ``tmpfs`` (paths),
    ``read_only`` (the root filesystem), ``network`` ("none" or "bridge"),
    ``ip``, ``bandwidth``, ``cpus``, ``memory``, ``pids`` (None:
    ``DEFAULT_LIMITS`` as root; "max": none), ``io_read_bps``/``io_write_bps``
    ("[DEV:]RATE"), ``cap_add``/``cap_drop``, ``seccomp_profile`` (None:
    labkit's filter; "unconfined": none; else a Docker-format JSON profile),
    ``device_rules`` (None: where the host has them), ``overlay``, ``env``
    (added to ``spawn.DEFAULT_ENV``), ``workdir``, ``user`` ("UID[:GID]"),
    ``init`` (--init: labkit's init as PID 1, the command its child) and
    ``group`` (the cgroup's name under labkit/). Malformed values raise
    UsageError here; nothing here reads kernel state.
    """

    rootfs_dir: str | None = None
    name: str | None = None
    hostname: str | None = None
    namespaces: Sequence[str] | str = DEFAULT_NAMESPACES
    userns: bool = False
    uid_map: Sequence[str] = ()
    gid_map: Sequence[str] = ()
    volumes: Sequence[str | mount.Volume] = ()
    tmpfs: Sequence[str] = ()
    read_only: bool = False
    network: str = "none"
    ip: str | None = None
    bandwidth: str | None = None
    cpus: str | float | None = None
    memory: str | int | None = None
    pids: str | int | None = None
    io_read_bps: str | None = None
    io_write_bps: str | None = None
    cap_add: Sequence[str] = ()
    cap_drop: Sequence[str] = ()
    seccomp_profile: str | None = None
    device_rules: bool | None = None
    overlay: bool = True
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    init: bool = False
    group: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or len(self.name) > 64 or set(self.name) - set(NAME_CHARS)):
            raise UsageError(f"bad container name {self.name!r}", "use 1-64 letters, digits, '.', '_', '-'")
        names = list(parse_namespaces(self.namespaces))
        if self.userns and "user" not in names:
            names.append("user")
        self.namespaces, self.userns = names, "user" in names
        self.volumes = [v if isinstance(v, str) else f"{v.source}:{v.target}{':ro' if v.readonly else ''}"
                        for v in self.volumes]
        for listed in ("uid_map", "gid_map", "tmpfs", "cap_add", "cap_drop"):   # (an IdMap is "I:O:C")
            setattr(self, listed, [str(item) for item in getattr(self, listed) or ()])
        if self.network not in NETWORKS:
            raise UsageError(f"unknown network mode {self.network!r}", f"choose from {', '.join(NETWORKS)}")
        if self.ip is not None and self.network != "bridge":
            raise UsageError("--ip needs --network bridge", "add --network bridge, or leave out --ip")
        if self.bandwidth is not None and self.network != "bridge":
            raise UsageError("--bandwidth needs --network bridge",
                             "add --network bridge: the rate is set on its veth")
        for is_set, needed, what, todo in REQUIREMENTS:
            if is_set(self) and needed not in names:
                raise UsageError(what.format(network=self.network), todo)
        if (self.uid_map or self.gid_map) and not self.userns:
            raise UsageError("--uid-map/--gid-map need a user namespace", "add --userns")
        for text in self.tmpfs:
            if ":" in text:
                raise UsageError(f"--tmpfs {text!r} has options",
                                 "give a path only: labkit's tmpfs is mode 1777, nosuid, nodev")
        if self.workdir is not None:
            if not self.workdir.startswith("/"):
                raise UsageError(f"--workdir {self.workdir!r} is not an absolute path",
                                 "give the directory inside the container from /, e.g. /src")
            self.workdir = os.path.normpath(self.workdir)
        self.env = check_env(self.env or {})


class Container:
    """A container: ``run()``/``start()`` make it real, ``exec()`` joins it.

    ``Container(spec)`` takes a ContainerSpec; ``Container(hostname="box", ...)``
    makes one from its keywords. Building it checks the spec and starts nothing:
    what reads the kernel (the cgroup mounts, the device control, the rootfs,
    built on first use) happens in ``start()``.
    """

    def __init__(self, spec: ContainerSpec | None = None, /, **fields: object) -> None:
        if spec is None:
            spec = ContainerSpec(**fields)         # type: ignore[arg-type]
        elif fields or not isinstance(spec, ContainerSpec):
            raise UsageError("Container takes one ContainerSpec, or keywords",
                             "write Container(ContainerSpec(...)) or Container(rootfs_dir=..., ...)")
        self.config = spec
        self.name = spec.name
        self.namespaces = tuple(spec.namespaces)
        self.volumes = [mount.parse_volume(v) for v in spec.volumes]
        self.tmpfs = [mount.check_target(t) for t in spec.tmpfs]
        self.uid_map = [user.parse_map(m, "--uid-map") for m in spec.uid_map]
        self.gid_map = [user.parse_map(m, "--gid-map") for m in spec.gid_map]
        # None: the default limit (as root; without root labkit cannot write the
        # host's cgroup files); "max": no limit at all.
        defaults = DEFAULT_LIMITS if os.geteuid() == 0 else {}
        self.limits = {"cpu": spec.cpus, "memory": defaults.get("memory") if spec.memory is None else spec.memory,
                       "pids": defaults.get("pids") if spec.pids is None else spec.pids}
        self.io = {"io_read_bps": spec.io_read_bps, "io_write_bps": spec.io_write_bps}
        values = {**self.limits, **{k: cgroups.split_device(v)[1] for k, v in self.io.items() if v}}
        for row in cgroups.LIMITS:               # the values' syntax, before anything starts
            if values.get(row.name) not in (None, "max"):
                row.parse(values[row.name])
        caps.resolve(spec.cap_add, spec.cap_drop)
        self.user = parse_user(spec.user) if spec.user is not None else None
        self.env = {**DEFAULT_ENV, **({"HOME": "/"} if self.user and self.user[0] else {}), **spec.env}
        self.group = spec.group or spec.name or f"run-{os.getpid()}-{next(_sequence)}"
        self.process: Process | None = None
        self.address: str | None = None
        self.prims: list[Primitive] = []

    # -- composition ------------------------------------------------------

    def primitives(self, *, tty: bool = False) -> list[Primitive]:
        """Fresh primitives for one start, in launch order (module docstring)."""
        names = self.namespaces
        spec = self.config
        prims: list[Primitive] = []
        group = self._cgroup()
        if group is not None:
            prims.append(group)
        device_rules = self._device_rules_wanted()
        if device_rules:
            prims.append(self._device_rules(group))
        if "user" in names:
            prims.append(user.UserNamespace(self.uid_map or None, self.gid_map or None))
        if "cgroup" in names:
            prims.append(cgroupns.CgroupNamespace())
        if "pid" in names:
            prims.append(pid.PidNamespace(mount_proc="mount" not in names))
        if "uts" in names:
            prims.append(uts.UtsNamespace(spec.hostname))
        if "ipc" in names:
            prims.append(ipc.IpcNamespace())
        network = NETWORKS[spec.network](spec) if "net" in names else None
        if network is not None:
            prims.append(network)
        if "mount" in names:
            prims.append(mount.MountNamespace(self._rootfs(), self.volumes, self.tmpfs,
                                              overlay=spec.overlay, owner=self._owner(),
                                              read_only=spec.read_only, workdir=spec.workdir))
        elif spec.workdir is not None:
            prims.append(mount.WorkingDirectory(spec.workdir))
        if spec.bandwidth is not None:
            prims.append(bandwidth.Bandwidth(spec.bandwidth, network))
        if tty:
            prims.append(terminal.Terminal())
        prims.extend(self._privileges(device_rules))
        if spec.init:
            prims.append(Init())       # after the filter: the command inherits all of the above
        return prims

    def capabilities(self, device_rules: bool | None = None) -> list[str]:
        """The capabilities the container keeps: Docker's 14 with --cap-add/--cap-drop,
        CAP_MKNOD only behind device rules (``without_mknod_unless_asked``)."""
        keep = caps.resolve(self.config.cap_add, self.config.cap_drop)
        if self.config.device_rules is None:
            wanted = self._device_rules_wanted() if device_rules is None else device_rules
            keep = without_mknod_unless_asked(keep, self.config.cap_add, wanted)
        return keep

    def _privileges(self, device_rules: bool | None = None) -> list[Primitive]:
        """The last steps, for start() and exec(): the capabilities and the user
        switch (caps.Capabilities), then the seccomp filter."""
        rootless_userns = "user" in self.namespaces and os.geteuid() != 0
        keep = self.capabilities(device_rules)
        prims: list[Primitive] = [caps.Capabilities(keep, user=self.user, setgroups=not rootless_userns)]
        profile = self.config.seccomp_profile
        if profile is None:
            prims.append(seccomp.Seccomp())
        elif profile != UNCONFINED:                # a profile's rules may depend on the capabilities
            prims.append(seccomp.Seccomp.from_profile(profile, caps=keep))
        return prims

    def _device_rules_wanted(self) -> bool:
        """Device rules: as asked, or (None) where the host has a mechanism and we are root."""
        asked = self.config.device_rules
        if asked is None:
            return devices.available() and os.geteuid() == 0
        if asked and not devices.available():
            raise LabkitError("no device control on this host: neither a cgroup v1 devices hierarchy "
                              "nor a cgroup2 mount for a BPF device program",
                              "mount one (see `labkit doctor`), or run without device rules")
        return asked

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
        given = self.config.rootfs_dir
        return rootfs.check_rootfs(given) if given else rootfs.default_rootfs()

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
        if self.config.workdir is not None:
            prims.append(mount.WorkingDirectory(self.config.workdir))
        if tty:
            prims.append(terminal.Terminal())
        prims.extend(self._privileges())
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
        """The ContainerSpec as a JSON-safe dict: ``Container(ContainerSpec(**c.spec()))``
        rebuilds the same container (``labkit exec`` rebuilds it from its state file)."""
        return dataclasses.asdict(self.config)

    def _save_state(self) -> None:
        import json     # here, not at the top: only a named container has a state file

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
    from its state file: ``exec()`` joins it by its host PID, with its
    environment, working directory, user, capabilities and seccomp filter."""

    def __init__(self, name: str, state: dict) -> None:
        known = {f.name for f in dataclasses.fields(ContainerSpec)}
        spec = {k: v for k, v in state["spec"].items() if k in known}
        super().__init__(ContainerSpec(**{**spec, "name": None, "group": f"attached-{name}"}))
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
    found: dict[str, dict] = {}
    if not os.path.isdir(STATE_DIR):
        return found
    import json         # here, not at the top: `labkit run` without --name reads no state
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


# --network mode -> the network namespace primitive that makes it (net.py).
NETWORKS = {
    "none": lambda spec: net.NetNamespace(),
    "bridge": lambda spec: net.BridgeNetwork(spec.ip),
}
