"""The order in which the kernel checks a system call, per family, from its source.

A call is refused by the FIRST check that says no: sethostname(2) without
CAP_SYS_ADMIN fails EPERM even when the name is too long (EINVAL would come
later), kill(2) of a PID the caller's PID namespace does not have fails ESRCH
even without CAP_KILL. So the order matters, and it differs per call: there is
no single "namespace, then cgroup, then capability" pipeline. ``ORDER`` lists
each family's checks as the kernel's code takes them, each with the file and
function it comes from; the tests (tests/test_checks.py) make two checks fail
at once on the running kernel and assert that the one listed first answers.

The kinds of check (``KINDS``), as a trace's ``Record.deciding`` names them:

- ``seccomp``: the process's seccomp filter, run on every call before the call
  itself and before the ``raw_syscalls:sys_enter`` tracepoint (so a call it
  refuses shows only its ``sys_exit``).
- ``capability``: ``ns_capable()``/``capable()``, a capability checked over the
  user namespace that owns the object (the UTS namespace's owner, the
  network namespace's owner...).
- ``namespace``: a LOOKUP in one of the caller's namespaces, of a path (in
  its mount namespace's tree), a PID (find_vpid, in its PID namespace), an
  address or a port (its network namespace's tables). Not found or taken:
  ENOENT, ENOTDIR, ESRCH, EADDRNOTAVAIL, EADDRINUSE. labkit's decision: a
  lookup that finds nothing is a namespace answer, because what the caller
  can name is what its namespaces hold.
- ``permission``: a credential check that is not a capability: the file mode
  bits and ACLs (inode_permission -> generic_permission), the UID match of
  kill(2), a key's permission mask. generic_permission falls back on
  CAP_DAC_READ_SEARCH / CAP_DAC_OVERRIDE only after the mode bits said no: those
  capability checks are part of this one.
- ``cgroup``: a limit of the caller's cgroup: pids.max at fork, memory.max when
  a page is charged, a cgroup BPF program (bind, devices).
- ``execute``: the call itself: checking its arguments (EINVAL, EFAULT, EBADF:
  many calls do this first) and doing its work (ENOMEM, EEXIST...). The same
  kind may appear twice in one order.

Sources were read in Debian's linux-source packages 6.1.192 (Debian 12, lab
VM), 6.12.117 (Debian 13, lab VM) and 7.3.4 (the newest packaged); each order
below is the same in all three (where a function moved, ``source`` says so).
This host's 6.18 was not read; the tests check the orders on it.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("seccomp", "capability", "namespace", "permission", "cgroup", "execute")


@dataclass(frozen=True)
class Check:
    """One check of a syscall: its kind, what it checks, where, and its errno(s)."""

    kind: str                           # one of KINDS
    what: str                           # one line, for a student
    source: str                         # file: function -> the call that checks
    denies_with: tuple[str, ...]        # errno names it answers when it says no


SECCOMP = Check(
    "seccomp", "the process's seccomp filter (labkit's: seccomp.DENIED), before the call runs",
    "kernel/entry/common.c: syscall_trace_enter() -> __secure_computing(), then trace_sys_enter() "
    "(6.1, 6.12; kernel/entry/syscall-common.c on 6.17+, include/linux/entry-common.h on 7.x, "
    "same order)",
    ("EPERM", "ENOSYS"))

EXECUTE = Check("execute", "the call does its work (or fails for its own reasons)",
                "arch/x86/entry/syscall_64.c: x64_sys_call() -> the call's SYSCALL_DEFINE", ())

# --- the families --------------------------------------------------------------

FAMILIES: dict[str, tuple[str, ...]] = {
    "uts": ("sethostname", "setdomainname"),
    "mount": ("mount",),
    "unshare": ("unshare",),
    "setns": ("setns",),
    "kill": ("kill", "tkill", "tgkill"),
    "open": ("open", "openat", "openat2", "creat"),
    "bind": ("bind",),
    "fork": ("clone", "clone3", "fork", "vfork"),
    "memory": ("mmap", "brk", "mremap"),
    "keyctl": ("keyctl", "add_key", "request_key"),
}

_PATH_WALK = (
    Check("permission", "search (x) permission on each directory of the path, in turn",
          "fs/namei.c: link_path_walk() -> may_lookup() -> inode_permission(MAY_EXEC)", ("EACCES",)),
    Check("namespace", "each name looked up in the directory before it, in the caller's mount "
          "namespace's tree (same component: permission first, then lookup)",
          "fs/namei.c: link_path_walk() -> walk_component()", ("ENOENT", "ENOTDIR", "ELOOP")),
)

ORDER: dict[str, tuple[Check, ...]] = {
    "uts": (
        SECCOMP,
        Check("capability", "CAP_SYS_ADMIN over the UTS namespace's owning user namespace",
              "kernel/sys.c: SYSCALL_DEFINE2(sethostname) -> ns_capable(uts_ns->user_ns, "
              "CAP_SYS_ADMIN) (setdomainname: the same)", ("EPERM",)),
        Check("execute", "the name's length: at most 64 bytes (__NEW_UTS_LEN)",
              "kernel/sys.c: SYSCALL_DEFINE2(sethostname): len > __NEW_UTS_LEN", ("EINVAL",)),
        Check("execute", "copy the name into the caller's UTS namespace",
              "kernel/sys.c: SYSCALL_DEFINE2(sethostname) -> copy_from_user(), utsname()",
              ("EFAULT",)),
    ),
    "mount": (
        SECCOMP,
        Check("execute", "copy the source, type and options strings from the caller",
              "fs/namespace.c: SYSCALL_DEFINE5(mount) -> copy_mount_string()", ("EFAULT",)),
        Check("namespace", "the TARGET path looked up in the caller's mount namespace",
              "fs/namespace.c: do_mount() -> user_path_at(dir_name)", ("ENOENT", "ENOTDIR", "EACCES")),
        Check("capability", "CAP_SYS_ADMIN over the mount namespace's owning user namespace",
              "fs/namespace.c: path_mount() -> may_mount() -> ns_capable(mnt_ns->user_ns, "
              "CAP_SYS_ADMIN)", ("EPERM",)),
        Check("execute", "the filesystem type is known",
              "fs/namespace.c: do_new_mount() -> get_fs_type()", ("ENODEV",)),
        Check("namespace", "the SOURCE path looked up (a bind mount's, a block device's)",
              "fs/namespace.c: do_loopback() -> kern_path(old_name); fs/super.c: get_tree_bdev()",
              ("ENOENT", "ENOTDIR", "ENOTBLK")),
        Check("execute", "make and attach the mount", "fs/namespace.c: do_new_mount() / do_loopback()",
              ("EINVAL", "EBUSY")),
    ),
    "unshare": (
        SECCOMP,
        Check("execute", "the flags are ones unshare knows",
              "kernel/fork.c: ksys_unshare() -> check_unshare_flags()", ("EINVAL",)),
        Check("capability", "CAP_SYS_ADMIN over the caller's user namespace, for any CLONE_NEW* "
              "but CLONE_NEWUSER", "kernel/nsproxy.c: unshare_nsproxy_namespaces() -> "
              "ns_capable(user_ns, CAP_SYS_ADMIN)", ("EPERM",)),
        Check("execute", "make the namespaces; the per-user count (/proc/sys/user/max_*_namespaces)",
              "kernel/nsproxy.c: create_new_namespaces() -> copy_utsname()... -> inc_ucount()",
              ("ENOSPC", "ENOMEM")),
    ),
    "setns": (
        SECCOMP,
        Check("execute", "the descriptor is a namespace (or a pidfd) of the type asked for",
              "kernel/nsproxy.c: SYSCALL_DEFINE2(setns) -> proc_ns_file(), check_setns_flags()",
              ("EBADF", "EINVAL")),
        Check("capability", "CAP_SYS_ADMIN over the target namespace's owner AND over the caller's "
              "user namespace", "kernel/utsname.c: utsns_install() -> ns_capable() twice "
              "(each type's install(), via kernel/nsproxy.c: validate_ns())", ("EPERM",)),
        EXECUTE,
    ),
    "kill": (
        SECCOMP,
        Check("namespace", "the PID looked up in the caller's PID namespace",
              "kernel/signal.c: kill_proc_info() -> kill_pid_info(find_vpid(pid)) -> pid_task()",
              ("ESRCH",)),
        Check("execute", "the signal number is valid",
              "kernel/signal.c: group_send_sig_info() -> check_kill_permission() -> valid_signal()",
              ("EINVAL",)),
        Check("permission", "the caller's real or effective UID is the target's real or saved UID",
              "kernel/signal.c: check_kill_permission() -> kill_ok_by_cred(): uid_eq()", ()),
        Check("capability", "else CAP_KILL over the target's user namespace",
              "kernel/signal.c: kill_ok_by_cred() -> ns_capable(tcred->user_ns, CAP_KILL)",
              ("EPERM",)),
        Check("execute", "queue the signal", "kernel/signal.c: do_send_sig_info()", ()),
    ),
    "open": (
        SECCOMP,
        Check("execute", "the flags, the path string, a free descriptor (RLIMIT_NOFILE)",
              "fs/open.c: do_sys_openat2() -> build_open_flags(), getname(), get_unused_fd_flags()",
              ("EINVAL", "EFAULT", "ENAMETOOLONG", "EMFILE")),
        *_PATH_WALK,
        Check("execute", "O_CREAT|O_EXCL on an existing file, a directory opened for writing",
              "fs/namei.c: do_open()", ("EEXIST", "EISDIR")),
        Check("permission", "the file's mode bits for the access asked (read, write)",
              "fs/namei.c: do_open() -> may_open() -> inode_permission(MAY_OPEN | acc_mode)",
              ("EACCES", "EPERM")),
        Check("execute", "open it (a write on a read-only mount, a busy executable)",
              "fs/open.c: vfs_open() -> do_dentry_open()", ("EROFS", "ETXTBSY")),
    ),
    "bind": (
        SECCOMP,
        Check("execute", "the descriptor is a socket, the address fits",
              "net/socket.c: __sys_bind() -> sockfd_lookup_light(), move_addr_to_kernel(); "
              "net/ipv4/af_inet.c: inet_bind_sk() (inet_bind() on 6.1): addr_len",
              ("EBADF", "ENOTSOCK", "EINVAL")),
        Check("cgroup", "a BPF program attached to the caller's cgroup v2 (CGROUP_INET4_BIND), if any",
              "net/ipv4/af_inet.c: inet_bind_sk() -> BPF_CGROUP_RUN_PROG_INET_BIND_LOCK()", ("EPERM",)),
        Check("execute", "the address family is AF_INET", "net/ipv4/af_inet.c: __inet_bind(): sin_family",
              ("EAFNOSUPPORT",)),
        Check("namespace", "the address is one of the network namespace's own",
              "net/ipv4/af_inet.c: __inet_bind() -> inet_addr_valid_or_nonlocal()",
              ("EADDRNOTAVAIL",)),
        Check("capability", "CAP_NET_BIND_SERVICE over the network namespace's owner, for a port "
              "below net.ipv4.ip_unprivileged_port_start", "net/ipv4/af_inet.c: __inet_bind() -> "
              "inet_port_requires_bind_service(), ns_capable(net->user_ns, CAP_NET_BIND_SERVICE)",
              ("EACCES",)),
        Check("namespace", "the port is free in the network namespace's port table",
              "net/ipv4/af_inet.c: __inet_bind() -> sk->sk_prot->get_port()", ("EADDRINUSE",)),
    ),
    "fork": (
        SECCOMP,
        Check("execute", "the flags make sense together (e.g. CLONE_NEWNS with CLONE_FS)",
              "kernel/fork.c: copy_process(): clone_flags checks", ("EINVAL",)),
        Check("execute", "RLIMIT_NPROC, the user's process count (root, CAP_SYS_RESOURCE and "
              "CAP_SYS_ADMIN are exempt)", "kernel/fork.c: copy_process() -> "
              "is_rlimit_overlimit(UCOUNT_RLIMIT_NPROC)", ("EAGAIN",)),
        Check("capability", "CAP_SYS_ADMIN over the caller's user namespace, for CLONE_NEW* flags",
              "kernel/fork.c: copy_process() -> copy_namespaces() (kernel/nsproxy.c) -> "
              "ns_capable(user_ns, CAP_SYS_ADMIN)", ("EPERM",)),
        Check("namespace", "a PID in the child's PID namespace and each one above it",
              "kernel/fork.c: copy_process() -> alloc_pid() (kernel/pid.c)", ("EAGAIN", "ENOMEM")),
        Check("cgroup", "pids.max of the caller's cgroup and each ancestor",
              "kernel/fork.c: copy_process() -> cgroup_can_fork() (kernel/cgroup/cgroup.c) -> "
              "pids_can_fork() -> pids_try_charge() (kernel/cgroup/pids.c)", ("EAGAIN",)),
        EXECUTE,
    ),
    # brk(2) answers no by returning the old break, not -1: the C library makes it ENOMEM.
    "memory": (
        SECCOMP,
        Check("execute", "the length and flags", "mm/mmap.c: do_mmap()", ("EINVAL", "EBADF")),
        Check("permission", "a file mapping: the descriptor's open mode against PROT_WRITE/MAP_SHARED",
              "mm/mmap.c: do_mmap(): file->f_mode & FMODE_WRITE", ("EACCES",)),
        Check("execute", "RLIMIT_AS (brk: first RLIMIT_DATA)",
              "mm/mmap.c: may_expand_vm(); SYSCALL_DEFINE1(brk) -> check_data_rlimit()", ("ENOMEM",)),
        Check("execute", "overcommit: the commit limit (vm.overcommit_memory); CAP_SYS_ADMIN in the "
              "initial user namespace only lifts the root reserve",
              "mm/mmap.c: __mmap_region() (mm/vma.c on 7.x) -> "
              "security_vm_enough_memory_mm() -> cap_vm_enough_memory() (security/commoncap.c), "
              "__vm_enough_memory() (mm/util.c)", ("ENOMEM",)),
        Check("cgroup", "memory.max, charged when a page is first touched (the page fault), not "
              "here: over the limit the kernel reclaims, then the OOM killer sends SIGKILL",
              "mm/memory.c: do_anonymous_page() -> mem_cgroup_charge() -> mm/memcontrol.c: "
              "__mem_cgroup_charge() -> charge_memcg() -> try_charge_memcg() -> mem_cgroup_oom()", ()),
    ),
    "keyctl": (
        SECCOMP,
        Check("namespace", "the key looked up among the caller's keyrings (its user keyring "
              "belongs to its user namespace)", "security/keys/keyctl.c: SYSCALL_DEFINE5(keyctl) -> "
              "e.g. keyctl_get_keyring_ID() -> lookup_user_key() (security/keys/process_keys.c)",
              ("ENOKEY", "EKEYREVOKED", "EKEYEXPIRED")),
        Check("permission", "the key's permission mask for the caller (possessor, user, group, other)",
              "security/keys/process_keys.c: lookup_user_key() -> key_task_permission() "
              "(security/keys/permission.c)", ("EACCES",)),
        EXECUTE,
    ),
}


def family(syscall: str) -> str | None:
    """The family ``syscall`` belongs to, or None."""
    return next((f for f, names in FAMILIES.items() if syscall in names), None)


def order(syscall: str) -> tuple[Check, ...]:
    """The kernel's checks for ``syscall``, first first (seccomp, then the call, for
    a syscall outside every family: its own checks are not in this table)."""
    f = family(syscall)
    return ORDER[f] if f else (SECCOMP, EXECUTE)



def deciding_index(syscall: str, kind: str, errno: str | None) -> int | None:
    """Where in ``order(syscall)`` a call decided by a check of ``kind`` stopped:
    the first check of that kind that answers ``errno``, else the last of that
    kind (for "execute": the call's own work); for a call that succeeded (``errno`` None, kind "execute"), the last
    check. None when the order has no check of that kind."""
    checks = order(syscall)
    if errno is None and kind == "execute":
        return len(checks) - 1
    of_kind = [i for i, c in enumerate(checks) if c.kind == kind]
    answering = [i for i in of_kind if errno in checks[i].denies_with]
    return answering[0] if answering else (of_kind[-1] if of_kind else None)

# --- checks that deny nothing ----------------------------------------------------------

@dataclass(frozen=True)
class Quiet:
    """A capability check that shows up in traces and decides nothing."""

    capability: str
    syscalls: frozenset[str]            # empty: any syscall
    why: str                            # one line, for a student
    source: str
    answer: str = "either"              # "granted", "refused" or "either": how it shows up

_OVERCOMMIT = ("security/commoncap.c: cap_vm_enough_memory() -> cap_capable(&init_user_ns, "
               "CAP_SYS_ADMIN, CAP_OPT_NOAUDIT); mm/util.c: __vm_enough_memory(): "
               "if (!cap_sys_admin) allowed -= admin_reserve")

# Calls that look a path up: where an overlay root's lookups happen.
PATH_SYSCALLS = frozenset((
    "open", "openat", "openat2", "creat", "stat", "lstat", "newfstatat", "statx", "access",
    "faccessat", "faccessat2", "readlink", "readlinkat", "execve", "execveat", "chdir", "getdents64",
    "mkdir", "mkdirat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "link", "linkat",
    "symlink", "symlinkat", "chmod", "fchmodat", "chown", "fchownat", "truncate", "getxattr",
    "lgetxattr", "listxattr", "llistxattr", "utimensat"))

NON_DECIDING: tuple[Quiet, ...] = (
    Quiet("CAP_SYS_ADMIN", frozenset(("mmap", "brk", "mremap", "execve", "execveat", "shmat")),
          "overcommit asks whether the caller may use the root reserve of memory; refused means "
          "only 'no reserve', and with vm.overcommit_memory=0 (the default) not even that",
          "mm/mmap.c: __mmap_region() -> security_vm_enough_memory_mm() (security/security.c); " + _OVERCOMMIT,
          "refused"),
    Quiet("CAP_SYS_ADMIN", frozenset(("clone", "clone3", "fork", "vfork")),
          "fork copies the parent's writable private mappings and accounts each for overcommit: "
          "the root-reserve question again, not a denial (with CLONE_NEW* flags the same capability "
          "is also the namespace check, see checks.ORDER['fork'])",
          "kernel/fork.c: dup_mmap() (mm/mmap.c on 7.x) -> security_vm_enough_memory_mm(); " + _OVERCOMMIT,
          "refused"),
    Quiet("CAP_SYS_ADMIN", PATH_SYSCALLS,
          "overlayfs looks the name up in its layers with the credentials of whoever mounted it "
          "(labkit, with every capability): reading a layer's trusted.overlay.* attributes checks "
          "CAP_SYS_ADMIN of the mounter, granted; the container's own capabilities play no part",
          "fs/overlayfs/namei.c: ovl_lookup() -> ovl_override_creds() (fs/overlayfs/util.c; "
          "with_ovl_creds() on 7.x) -> fs/xattr.c: xattr_permission() -> capable(CAP_SYS_ADMIN)",
          "granted"),
    Quiet("CAP_SYS_ADMIN", frozenset(),
          "the stack grew during this call (a page fault below it, e.g. while the kernel copied "
          "into a buffer there): growing it asks overcommit's root-reserve question, no denial",
          "mm/mmap.c: acct_stack_growth() (mm/vma.c on 7.x) -> security_vm_enough_memory_mm(); "
          + _OVERCOMMIT, "refused"),
)


def quiet(syscall: str, capability: str, granted: bool | None = None) -> Quiet | None:
    """The entry of NON_DECIDING that explains a ``capability`` check inside
    ``syscall`` (``granted``: its answer, when known), or None when the check can
    decide. An entry for any syscall never covers a capability the syscall's own
    order checks (sethostname's CAP_SYS_ADMIN is never quiet)."""
    answer = None if granted is None else ("granted" if granted else "refused")
    own = any(c.kind == "capability" and capability in c.what for c in order(syscall))
    for q in NON_DECIDING:
        if q.capability != capability or (answer and q.answer not in (answer, "either")):
            continue
        if syscall in q.syscalls or (not q.syscalls and not own):
            return q
    return None
