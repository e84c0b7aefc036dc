"""A thin ctypes layer over the C library: the syscalls Python 3.11 lacks.

Each wrapper keeps C semantics: it calls the libc function, and when the kernel
returns -1 it raises ``OSError(errno, "<syscall>: <why>")``. The docstrings list
the kernel's preconditions, quoted from the man pages named there.

Nothing here allocates locks or imports modules when called, so these functions
are safe to call in a child between fork(2) and execve(2).
"""

from __future__ import annotations

import ctypes
import errno
import os

from .syscalls import syscall_number

# CDLL(None) is the running program, which links the C library (glibc or musl).
_libc = ctypes.CDLL(None, use_errno=True)
# The same library, called without releasing the GIL (see fork).
_libc_gil = ctypes.PyDLL(None, use_errno=True)

# Namespace flags, from <linux/sched.h>; see namespaces(7).
CLONE_NEWNS = 0x00020000      # mount namespace
CLONE_NEWCGROUP = 0x02000000  # cgroup namespace
CLONE_NEWUTS = 0x04000000     # hostname and NIS domain name
CLONE_NEWIPC = 0x08000000     # System V IPC, POSIX message queues
CLONE_NEWUSER = 0x10000000    # user and group IDs, capabilities
CLONE_NEWPID = 0x20000000     # process IDs
CLONE_NEWNET = 0x40000000     # network devices, stacks, ports

# The name each namespace has under /proc/PID/ns/, by flag.
NAMESPACES: dict[str, int] = {
    "mnt": CLONE_NEWNS,
    "cgroup": CLONE_NEWCGROUP,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET,
}

# mount(2) flags, from <sys/mount.h>.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

# umount2(2) flags.
MNT_DETACH = 2

# prctl(2) options.
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15                   # the thread's name, /proc/PID/comm
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47

# The calls labkit makes through syscall() below, by name: libc has no wrapper for them.
BY_NUMBER = ("pivot_root", "fsopen", "fsconfig", "fsmount", "finit_module", "bpf")


def resolve_syscall_numbers() -> None:
    """Look up, now, the numbers of the calls this module makes by number.

    syscall() asks libseccomp (syscalls.py), which loads a shared library and
    allocates; spawn() calls this in the parent, so that a child between fork
    and execve (kernel.pivot_root in a primitive's enter()) finds them cached.
    """
    for name in BY_NUMBER:
        try:
            syscall_number(name)
        except KeyError:
            pass                                  # syscall() raises ENOSYS when it is called


def syscall(name: str, *args: object) -> int:
    """syscall(2) by name, for the calls libc has no wrapper for; ENOSYS where
    libseccomp knows no number for it on this machine (syscalls.py asks it)."""
    try:
        number = syscall_number(name)
    except KeyError:
        raise OSError(errno.ENOSYS,
                      f"{name}: libseccomp knows no syscall number for it on {os.uname().machine}") from None
    return _check(_libc.syscall(ctypes.c_long(number), *args), name)


def _check(result: int, syscall: str, subject: str = "") -> int:
    """Turn a C-style -1 return into OSError(errno, "syscall: [subject: ]why")."""
    if result == -1:
        err = ctypes.get_errno()
        where = f"{subject}: " if subject else ""
        raise OSError(err, f"{syscall}: {where}{os.strerror(err)}")
    return result


def _path(p: str | bytes | None) -> bytes | None:
    return os.fsencode(p) if p is not None else None


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces of the kinds in ``flags``.

    unshare(2): every CLONE_NEW* flag but CLONE_NEWUSER needs CAP_SYS_ADMIN in
    the caller's user namespace. CLONE_NEWPID does not move the caller: only
    its next child is created in the new PID namespace (and becomes its PID 1).
    CLONE_NEWUSER fails with EINVAL in a multithreaded process.
    """
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that ``fd`` (an open /proc/PID/ns/* file) refers to.

    setns(2): needs CAP_SYS_ADMIN in the namespace's owning user namespace (and
    in the caller's own for most types). Joining a PID namespace only affects
    children created afterwards. ``nstype`` 0 accepts any type.
    """
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None,
          flags: int = 0, data: str | None = None) -> None:
    """Attach a filesystem (or change a mount's propagation) at ``target``.

    mount(2): needs CAP_SYS_ADMIN in the user namespace that owns the caller's
    mount namespace. Propagation changes (MS_PRIVATE, MS_SLAVE) take only the
    target and the flag; MS_REC applies them to every mount below the target.
    """
    _check(_libc.mount(_path(source), _path(target), _path(fstype),
                       ctypes.c_ulong(flags), _path(data)),
           "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    """Detach the filesystem mounted at ``target``; MNT_DETACH makes it lazy.

    umount2(2): with MNT_DETACH the mount disappears from the namespace at once
    and is freed when it is no longer busy.
    """
    _check(_libc.umount2(_path(target), ctypes.c_int(flags)),
           "umount2", target)


FSOPEN_CLOEXEC = 1            # include/uapi/linux/mount.h
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1


def detached_mount(fstype: str) -> int:
    """A new mount of ``fstype`` that is attached nowhere: a file descriptor for its root.

    fsopen(2) makes a filesystem context, fsconfig(FSCONFIG_CMD_CREATE) creates
    the superblock, fsmount(2) turns it into a mount object that no mount
    namespace contains (needs CAP_SYS_ADMIN, like mount(2)). Paths under
    ``/proc/self/fd/N/`` reach its files; nobody else sees it, and closing the
    last descriptor (or the process dying) frees it: nothing to unmount.
    """
    fsfd = syscall("fsopen", fstype.encode(), ctypes.c_uint(FSOPEN_CLOEXEC))
    try:
        syscall("fsconfig", ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_CMD_CREATE),
                 None, None, ctypes.c_int(0))
        return syscall("fsmount", ctypes.c_int(fsfd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(0))
    finally:
        os.close(fsfd)


def pivot_root(new_root: str, put_old: str) -> None:
    """Make ``new_root`` the root mount of the caller's mount namespace.

    pivot_root(2): new_root must be a mount point and not on the same mount as
    the current root; put_old must be at or underneath new_root; neither the
    current root nor new_root may have shared propagation. The old root is
    moved to put_old, from where it can then be unmounted.
    """
    syscall("pivot_root", _path(new_root), _path(put_old))


def sethostname(name: str) -> None:
    """Set the hostname of the caller's UTS namespace.

    sethostname(2): needs CAP_SYS_ADMIN in the user namespace that owns the UTS
    namespace; at most 64 bytes (HOST_NAME_MAX), else EINVAL.
    """
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def setdomainname(name: str) -> None:
    """Set the NIS domain name of the caller's UTS namespace.

    setdomainname(2): same rules as sethostname(2), 64 bytes at most.
    """
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")


def threads() -> int:
    """How many threads the calling process has: /proc/self/task has one entry each (proc(5))."""
    return len(os.listdir("/proc/self/task"))


def fork() -> int:
    """fork(2) for a child that will execve or _exit, never return to its
    caller's code: 0 in the child, the child's PID in the parent.

    os.fork() is fork(2) plus CPython's own work for the child: it
    re-initialises the locks that other threads may have held, and runs the
    os.register_at_fork() handlers (threading's resets its Thread objects;
    random's reseeds). Every Python object that work touches is a page the
    kernel must copy for the child first (copy-on-write, fork(2)): about 200
    page faults, 0.4 ms on this lab's hosts. A process with one thread holds
    no lock another thread could have left taken, and a child that only
    makes system calls needs no handler, so with one thread this calls
    fork(2) directly, keeping the GIL across the call (ctypes.PyDLL): the
    child's one thread owns the GIL as the caller's did. With more threads (a
    notebook's kernel has several), or where /proc cannot tell, it is os.fork().
    """
    try:
        alone = threads() == 1
    except OSError:                 # no /proc showing us (a chroot): assume other threads
        alone = False
    return fork_single_threaded() if alone else os.fork()


def fork_single_threaded() -> int:
    """fork(2) directly, as fork() does for a caller known to have one thread
    without asking /proc (after a chroot, /proc may be another PID namespace's)."""
    return _check(_libc_gil.fork(), "fork")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """Call prctl(2) and return its (non-negative) result."""
    return _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2),
                              ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
                              ctypes.c_ulong(arg5)), "prctl")


# capget(2)/capset(2) use version 3: two 32-bit words per set.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) capability masks of ``pid``.

    capget(2): pid 0 means the calling thread.
    """
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    low, high = data[0], data[1]
    return ((high.effective << 32) | low.effective,
            (high.permitted << 32) | low.permitted,
            (high.inheritable << 32) | low.inheritable)


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability masks.

    capset(2): the new permitted set must be a subset of the current one, the
    effective set a subset of the new permitted set.
    """
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i, shift in enumerate((0, 32)):
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def proc_status(pid: int | str = "self") -> dict[str, str]:
    """The fields of /proc/PID/status, ``{"CapEff": "00000000a80425fb", "NSpid": "4242 1", ...}``.

    proc(5): one ``Name:<TAB>value`` line a field, written by the kernel's
    proc_pid_status() (fs/proc/array.c); values keep their own spacing
    (``Uid`` lists four ids, ``NSpid`` one PID a namespace, outermost first).
    """
    with open(f"/proc/{pid}/status") as f:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}


def ns_inode(pid: int | str, ns: str) -> int:
    """Inode number of /proc/PID/ns/NS: two processes share a namespace iff equal."""
    return os.stat(f"/proc/{pid}/ns/{ns}").st_ino


# System V message queues, from <sys/ipc.h> and <sys/msg.h>.
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_RMID = 0


def msgget(key: int, flags: int) -> int:
    """Get (with IPC_CREAT: create) the message queue ``key`` of the caller's
    IPC namespace and return its id. msgget(2)."""
    return _check(_libc.msgget(ctypes.c_int(key), ctypes.c_int(flags)), "msgget")


def msgctl_rmid(msqid: int) -> None:
    """Remove message queue ``msqid`` at once. msgctl(2) with IPC_RMID."""
    _check(_libc.msgctl(ctypes.c_int(msqid), ctypes.c_int(IPC_RMID), None), "msgctl")


# prctl(PR_CAP_AMBIENT, ...) operations, from <linux/prctl.h>.
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

def finit_module(fd: int, params: str = "", flags: int = 0) -> None:
    """Load the kernel module in the open file ``fd``.

    init_module(2): the caller needs CAP_SYS_MODULE in the *initial* user
    namespace, checked before the file is even looked at, so without it the
    call fails with EPERM whatever ``fd`` is. A kernel built without module
    support (CONFIG_MODULES=n) answers ENOSYS to everyone, before any check.
    """
    syscall("finit_module", ctypes.c_int(fd), params.encode(), ctypes.c_int(flags))


# Network device ioctls, from <linux/sockios.h> and <net/if.h>; see netdevice(7).
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
AF_INET = 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000


class _IfReq(ctypes.Structure):
    """struct ifreq: a 16-byte interface name, then a union (here its short ifr_flags)."""

    _fields_ = [("ifr_name", ctypes.c_char * 16), ("ifr_flags", ctypes.c_short),
                ("_pad", ctypes.c_char * 22)]


def link_up(ifname: str) -> None:
    """Bring the network device ``ifname`` of the caller's network namespace up.

    netdevice(7): any socket serves as a handle for the SIOCGIFFLAGS/SIOCSIFFLAGS
    ioctls, which act on the device of that name in the socket's network
    namespace; setting flags needs CAP_NET_ADMIN in the user namespace that owns
    it. No netlink is involved, so it is safe between fork(2) and execve(2).
    """
    sock = _check(_libc.socket(ctypes.c_int(AF_INET), ctypes.c_int(SOCK_DGRAM | SOCK_CLOEXEC),
                               ctypes.c_int(0)), "socket")
    try:
        req = _IfReq(ifname.encode())
        _check(_libc.ioctl(ctypes.c_int(sock), ctypes.c_ulong(SIOCGIFFLAGS), ctypes.byref(req)),
               "ioctl(SIOCGIFFLAGS)", ifname)
        req.ifr_flags |= IFF_UP
        _check(_libc.ioctl(ctypes.c_int(sock), ctypes.c_ulong(SIOCSIFFLAGS), ctypes.byref(req)),
               "ioctl(SIOCSIFFLAGS)", ifname)
    finally:
        os.close(sock)


# seccomp(2) through prctl(2), from <linux/prctl.h> and <linux/seccomp.h>.
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1     # seccomp(2)'s operation for the same


class SockFilter(ctypes.Structure):
    """struct sock_filter: one classic BPF instruction (8 bytes), see seccomp(2)."""

    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    """struct sock_fprog: the number of instructions and a pointer to them."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def seccomp_set_filter(prog: SockFprog) -> None:
    """Install the classic BPF program ``prog`` as a seccomp filter of the caller.

    seccomp(2) (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)): the caller
    needs no_new_privs set or CAP_SYS_ADMIN in its user namespace, else EACCES.
    The filter is kept across fork(2), clone(2) and execve(2) and can never be
    removed; every later syscall of the thread and its children runs it first.
    """
    _check(_libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                       ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           "prctl(PR_SET_SECCOMP)")


TIOCSCTTY = 0x540E     # <asm-generic/ioctls.h> (x86_64 and aarch64)


def set_controlling_terminal(fd: int) -> None:
    """Make the terminal open on ``fd`` the caller's controlling terminal.

    ioctl_tty(2) TIOCSCTTY: the caller must be a session leader (setsid(2)
    first) without a controlling terminal yet.
    """
    _check(_libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(TIOCSCTTY), ctypes.c_int(0)),
           "ioctl(TIOCSCTTY)")


# Capability names; a capability's number is its index here (<linux/capability.h>,
# capabilities(7)).
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
