"""The lab VM's Vagrantfile, and labkit's code on the VM's other architecture.

`vagrant up` cannot run in CI (no hardware virtualisation), so the Vagrantfile
is checked by Vagrant itself: ``vagrant validate`` for each provider it names,
and the configuration Vagrant's own library loads from it for each. Vagrant
validates only the active provider's block (plugins/kernel_v2/config/vm.rb,
"Validate only the _active_ provider"), so each is made active in turn with
VAGRANT_DEFAULT_PROVIDER. libvirt: its block is validated by the vagrant-libvirt
plugin (Debian's 0.11.2), which connects to libvirt to check that virtiofs is
usable; LIBVIRT_DEFAULT_URI=test:///default gives it libvirt's own test driver,
run inside the client library (no daemon, no VM). virtualbox: VirtualBox is not
installed, so ``--ignore-provider`` checks every setting but its block's.
No default may depend on a remote box service (Vagrant Cloud's public box
hosting closes on 2026-12-31): the box comes from LABKIT_BOX_URL, a box file
beside the Vagrantfile, or LABKIT_BOX, else `vagrant up` stops with one line.

An Apple Silicon host runs an arm64 (aarch64) VM, where the syscall numbers
differ from x86_64: labkit's tables are checked against the kernel's UAPI
headers for both machines (linux-libc-dev ships the x86_64 table and the
generic table that arm64 uses), and the busybox the rootfs copies must be a
static program for this machine.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import subprocess

import pytest

from labkit import __version__, kernel, spawn, syscalls
from labkit.errors import KernelError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAGRANT_DIR = os.path.join(REPO, "vagrant")
HEADERS = {
    "x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "aarch64": "/usr/include/asm-generic/unistd.h",
}
LABKIT_ENV = ("LABKIT_BOX", "LABKIT_BOX_URL", "LABKIT_BOX_VERSION", "LABKIT_CPUS", "LABKIT_MEMORY",
              "LABKIT_PORT")
PROVIDERS = ("virtualbox", "libvirt")
CATALOG = "https://school.example/labkit/labkit.json"

# Ruby, run with Vagrant's own library: the configuration it loads from the
# Vagrantfile for each provider, as JSON (nothing is created, no box is fetched).
DUMP_CONFIG = r"""
require "vagrant"
require "json"
env = Vagrant::Environment.new(cwd: ARGV[0], local_data_path: ARGV[1])
out = {}
%w[virtualbox libvirt].each do |name|
  config = env.vagrantfile.machine_config(:default, name.to_sym, env.boxes, nil, false)[:config]
  provider = config.vm.get_provider_config(name.to_sym)
  out[name] = {
    "box" => config.vm.box, "box_url" => config.vm.box_url, "box_version" => config.vm.box_version,
    "box_check_update" => config.vm.box_check_update, "hostname" => config.vm.hostname,
    "networks" => config.vm.networks.map { |type, opts| [type.to_s, opts] },
    "synced_folders" => config.vm.synced_folders,
    "provisioners" => config.vm.provisioners.map { |p| [p.name.to_s, p.type.to_s, p.config.inline, p.config.env] },
    "customizations" => provider.respond_to?(:customizations) ? provider.customizations : nil,
    "provider_config" => provider.class.name,
  }
end
out["providers"] = env.vagrantfile.config.vm.__providers.map(&:to_s)
puts JSON.generate(out)
"""


def vagrant_env(tmp_path, cwd: str = VAGRANT_DIR, **extra: str) -> dict[str, str]:
    """The caller's environment without LABKIT_* settings, with Vagrant's
    per-project state kept in tmp_path (not vagrant/.vagrant)."""
    env = {k: v for k, v in os.environ.items() if k not in LABKIT_ENV}
    env.update(VAGRANT_CWD=cwd, VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1", **extra)
    return env


def validate(tmp_path, cwd: str = VAGRANT_DIR, provider: str = "virtualbox",
             **extra: str) -> subprocess.CompletedProcess:
    """`vagrant validate` with `provider` active: libvirt's block validated by its plugin
    against libvirt's test driver; virtualbox's skipped (--ignore-provider, no VirtualBox)."""
    command = ["vagrant", "validate"]
    if provider == "libvirt":
        extra = {"LIBVIRT_DEFAULT_URI": "test:///default", **extra}
    else:
        command.append("--ignore-provider")
    return subprocess.run(command, env=vagrant_env(tmp_path, cwd, VAGRANT_DEFAULT_PROVIDER=provider, **extra),
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def config(tmp_path, cwd: str = VAGRANT_DIR, **extra: str) -> dict:
    result = subprocess.run(["ruby", "-e", DUMP_CONFIG, cwd, str(tmp_path / "dot")],
                            env=vagrant_env(tmp_path, cwd, **extra), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def copy_of_vagrant_dir(tmp_path, boxes: tuple[str, ...] = ()) -> str:
    """The Vagrantfile in a folder of its own (beside a link to labkit/, where it reads
    the version), with empty stand-ins for the box files named."""
    folder = tmp_path / "checkout" / "vagrant"
    folder.mkdir(parents=True)
    shutil.copy2(os.path.join(VAGRANT_DIR, "Vagrantfile"), folder / "Vagrantfile")
    (tmp_path / "checkout" / "labkit").symlink_to(os.path.join(REPO, "labkit"))
    for name in boxes:
        (folder / name).write_bytes(b"")
    return str(folder)


def test_vagrant_validate(tmp_path):
    dotdir = os.path.join(VAGRANT_DIR, ".vagrant")
    had_dotdir = os.path.exists(dotdir)          # a `vagrant up` of this checkout makes it
    for provider in PROVIDERS:
        for how in ({"LABKIT_BOX_URL": CATALOG}, {"LABKIT_BOX_URL": f"file:///srv/labkit-0.1.0-{provider}.box"},
                    {"LABKIT_BOX": "labkit/lab"}):
            result = validate(tmp_path, provider=provider, **how)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "validated successfully" in result.stdout
            assert ("Ignoring provider config" in result.stdout) == (provider == "virtualbox")
    folder = copy_of_vagrant_dir(tmp_path, ("labkit-0.1.0.202612010000-libvirt.box",))
    for provider in PROVIDERS:
        result = validate(tmp_path, cwd=folder, provider=provider)
        assert result.returncode == 0, result.stdout + result.stderr
    assert had_dotdir or not os.path.exists(dotdir), "the test wrote vagrant/.vagrant"


def test_no_box_is_one_message_that_says_how_to_get_one(tmp_path):
    """Without LABKIT_BOX_URL, a box file or LABKIT_BOX, nothing is fetched from anywhere:
    one line says how to build a box or where to point LABKIT_BOX_URL."""
    result = validate(tmp_path, cwd=copy_of_vagrant_dir(tmp_path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("labkit: no lab VM box: build one with "
                               "`./lab vm build --release trixie && ./lab vm box`")
    assert "LABKIT_BOX_URL" in lines[0]


def test_no_default_depends_on_vagrant_cloud():
    """Vagrant Cloud boxes are named OWNER/NAME with no URL (bento/debian-12): none is left,
    and no address of the service."""
    with open(os.path.join(VAGRANT_DIR, "Vagrantfile")) as f:
        text = f.read()
    for gone in ("bento/", "debian/bookworm64", "debian/trixie64", "vagrantup.com", "vagrantcloud"):
        assert gone not in text
    names = re.findall(r'"([a-z0-9_-]+/[a-z0-9_.-]+)"', text)
    assert names == ["labkit/lab"], names       # the catalog's own name, fetched only from LABKIT_BOX_URL


@pytest.mark.parametrize("provider,line,wrong,error", [
    ("virtualbox", 'config.vm.hostname = "labkit"', 'config.vm.hostnam = "labkit"', "hostnam"),
    ("libvirt", 'config.vm.hostname = "labkit"', 'config.vm.hostnam = "labkit"', "hostnam"),
    # libvirt's block: a setting the plugin does not have, and a value only its own check refuses.
    ("libvirt", "lv.memory = MEMORY", "lv.memroy = MEMORY", "The following settings shouldn't exist: memroy"),
    ("libvirt", "lv.memory = MEMORY", 'lv.memory = MEMORY; lv.qemu_use_agent = "yes"',
     "libvirt.qemu_use_agent must be a boolean"),
])
def test_vagrant_validate_catches_a_wrong_setting(tmp_path, provider, line, wrong, error):
    """The same check fails on a Vagrantfile with a setting Vagrant, or the provider's plugin, refuses."""
    folder = copy_of_vagrant_dir(tmp_path)
    path = os.path.join(folder, "Vagrantfile")
    with open(path) as f:
        text = f.read()
    assert text.count(line) == 1
    with open(path, "w") as f:
        f.write(text.replace(line, wrong))
    result = validate(tmp_path, cwd=folder, provider=provider, LABKIT_BOX_URL=CATALOG)
    assert result.returncode != 0
    assert error in result.stdout + result.stderr


@pytest.mark.parametrize("name,value", [("LABKIT_CPUS", "two"), ("LABKIT_MEMORY", "4G"),
                                        ("LABKIT_PORT", "-1")])
def test_a_bad_setting_is_one_clear_line(tmp_path, name, value):
    result = validate(tmp_path, LABKIT_BOX_URL=CATALOG, **{name: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f'labkit: {name}="{value}" is not a whole number')


def test_a_catalog_for_every_provider(tmp_path):
    got = config(tmp_path, LABKIT_BOX_URL=CATALOG)
    assert set(PROVIDERS) <= set(got["providers"])
    for provider in PROVIDERS:
        vm = got[provider]
        assert (vm["box"], vm["box_url"]) == ("labkit/lab", [CATALOG])
        # Pinned to this checkout's labkit release; any build of it (`vagrant box update`).
        assert vm["box_version"] == f"~> {__version__}"
        assert vm["box_check_update"] is False
        # Jupyter is reachable from the host's loopback only, not from its network.
        assert ["forwarded_port", {"guest": 8888, "host": 8888, "host_ip": "127.0.0.1",
                                   "id": "jupyter", "protocol": "tcp"}] in vm["networks"]
        # The whole repository is synced, at /labkit; provisioning runs its script.
        assert vm["synced_folders"]["/labkit"]["hostpath"] == ".."
        assert vm["synced_folders"]["/vagrant"]["disabled"] is True
        assert vm["provisioners"] == [["labkit", "shell", "bash /labkit/vagrant/provision.sh",
                                       {"LABKIT_JUPYTER_IP": "0.0.0.0", "LABKIT_JUPYTER_PORT": "8888",
                                        "LABKIT_HOST_PORT": "8888"}]]
        assert vm["hostname"] == "labkit"
    assert got["libvirt"]["synced_folders"]["/labkit"]["type"] == "virtiofs"
    # Each block is read by its provider's own configuration class (libvirt's: the plugin's).
    assert got["virtualbox"]["provider_config"] == "VagrantPlugins::ProviderVirtualBox::Config"
    assert got["libvirt"]["provider_config"] == "VagrantPlugins::ProviderLibvirt::Config"
    assert ["pre-boot", ["modifyvm", "id", "--cpus", 2]] in got["virtualbox"]["customizations"]
    assert ["pre-boot", ["modifyvm", "id", "--memory", "4096"]] in got["virtualbox"]["customizations"]


def test_box_files_beside_the_vagrantfile_the_newest_per_provider(tmp_path):
    old, new = "labkit-0.1.0.202611300000", "labkit-0.1.0.202612010000"
    folder = copy_of_vagrant_dir(tmp_path, (f"{old}-virtualbox.box", f"{new}-virtualbox.box",
                                            f"{new}-libvirt.box", "labkit-notes.box"))
    got = config(tmp_path, cwd=folder)
    for provider in PROVIDERS:
        assert got[provider]["box"] == f"{new}-{provider}"
        assert got[provider]["box_url"] == [f"file://{folder}/{new}-{provider}.box"]
        assert got[provider]["box_version"] is None          # a box file has no version to pin
        assert got[provider]["box_check_update"] is False


def test_environment_overrides(tmp_path):
    got = config(tmp_path, LABKIT_BOX="class/lab", LABKIT_BOX_URL="file:///srv/boxes/labkit.json",
                 LABKIT_BOX_VERSION="= 0.1.0.202612010000",
                 LABKIT_CPUS="4", LABKIT_MEMORY="8192", LABKIT_PORT="18888")
    for provider in PROVIDERS:
        assert got[provider]["box"] == "class/lab"
        assert got[provider]["box_url"] == ["file:///srv/boxes/labkit.json"]
        assert got[provider]["box_version"] == "= 0.1.0.202612010000"
        forwarded = [opts for kind, opts in got[provider]["networks"] if opts.get("id") == "jupyter"]
        assert forwarded[0]["host"] == 18888 and forwarded[0]["guest"] == 8888
        # The login URL names the host's side of the forward (labkit-token, jupyter-service.sh).
        assert got[provider]["provisioners"][0][3]["LABKIT_HOST_PORT"] == "18888"
    assert ["pre-boot", ["modifyvm", "id", "--cpus", 4]] in got["virtualbox"]["customizations"]
    assert ["pre-boot", ["modifyvm", "id", "--memory", "8192"]] in got["virtualbox"]["customizations"]
    one_box = config(tmp_path, LABKIT_BOX_URL="file:///srv/boxes/labkit-0.1.0-libvirt.box")
    assert one_box["libvirt"]["box"] == one_box["virtualbox"]["box"] == "labkit/lab"
    assert one_box["libvirt"]["box_version"] is None
    named = config(tmp_path, LABKIT_BOX="labkit/lab")
    assert (named["libvirt"]["box"], named["libvirt"]["box_url"]) == ("labkit/lab", None)


# --- aarch64: syscall numbers --------------------------------------------------------------

def header_table(machine: str) -> dict[int, set[str]]:
    """Syscall number -> name(s) from the kernel's UAPI header for ``machine``.

    For the generic table (arm64), ``__NR3264_*`` numbers take the names the
    header gives them on 64-bit machines (``__NR_fstat __NR3264_fstat``), and
    entries that differ by configuration (sync_file_range/sync_file_range2)
    keep both names.
    """
    path = HEADERS[machine]
    if not os.path.exists(path):
        pytest.skip(f"{path} not installed (Debian package linux-libc-dev for that machine)")
    with open(path) as f:
        text = f.read()
    table: dict[int, set[str]] = {}
    for name, number in re.findall(r"^#define __NR_(\w+)\s+(\d+)\s*$", text, re.M):
        if name not in ("syscalls", "arch_specific_syscall"):   # a count and a range start
            table.setdefault(int(number), set()).add(name)
    numbers64 = {n: int(v) for n, v in re.findall(r"^#define __NR3264_(\w+)\s+(\d+)", text, re.M)}
    if numbers64:
        block64 = text.split("#if __BITS_PER_LONG == 64 && !defined(__SYSCALL_COMPAT)")[1].split("#else")[0]
        for name, key in re.findall(r"^#define __NR_(\w+) __NR3264_(\w+)", block64, re.M):
            if key in numbers64:              # __NR3264_stat: only on machines that want it
                table.setdefault(numbers64[key], set()).add(name)
    return table


def test_every_syscall_kernel_py_calls_by_number_has_one_on_each_machine():
    """kernel.syscall takes its numbers from libseccomp (syscalls.py), which the test below checks
    against the headers; here: each name kernel.py asks for is in both tables."""
    with open(kernel.__file__) as f:
        names = set(re.findall(r'[^.]syscall\("(\w+)"', f.read()))
    assert {"pivot_root", "fsopen"} <= names
    for machine in HEADERS:
        for name in names:
            assert name in header_table(machine).get(syscalls.syscall_number(name, machine), set())


class PivotRoot(spawn.Primitive):
    """In a new mount namespace, pivot_root(2) into ``new_root`` (bound from
    ``source`` first when given), putting the old root at ``new_root/tmp``."""

    name = "pivot-root"
    flags = kernel.CLONE_NEWNS

    def __init__(self, new_root: str, source: str | None) -> None:
        self.new_root, self.source, self.put_old = new_root, source, f"{new_root}/tmp"

    def enter(self) -> None:
        kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
        if self.source:
            kernel.mount(self.source, self.new_root, None, kernel.MS_BIND | kernel.MS_REC)
        kernel.pivot_root(self.new_root, self.put_old)
        os.chdir("/")


def test_pivot_root_number_really_is_pivot_root_here(tmp_path, no_leaks):
    """With this machine's number the kernel does what pivot_root(2) says: it
    refuses a new_root that is not a mount point (EINVAL; EBUSY when it is on
    the current root's mount), and with a mount point it swaps the roots: the
    old root then shows under put_old."""
    new_root = tmp_path / "new"
    (new_root / "tmp").mkdir(parents=True)
    with pytest.raises(KernelError) as refused:
        spawn.run(["true"], [PivotRoot(str(new_root), None)], timeout=30)
    assert refused.value.errno in (errno.EINVAL, errno.EBUSY) and refused.value.step == "pivot-root: enter"

    (tmp_path / "marker").write_text("old root")
    seen_from_new_root = f"/tmp{tmp_path}/marker"          # the old root is at /tmp now
    result = spawn.run(["cat", seen_from_new_root], [PivotRoot(str(new_root), "/")], timeout=30)
    assert (result.returncode, result.stdout) == (0, "old root"), result.stderr


@pytest.mark.parametrize("machine", sorted(HEADERS))
def test_trace_syscall_names_match_the_kernel_headers(machine):
    """libseccomp's name for each number of the header is one the header gives it,
    or syscall_N where this libseccomp is older than the header (syscalls.py)."""
    header = header_table(machine)
    named = {n: syscalls.syscall_name(n, machine) for n in header}
    wrong = {n: (named[n], sorted(names)) for n, names in header.items()
             if named[n] not in names and named[n] != f"syscall_{n}"}
    assert not wrong, f"{machine}: number -> (libseccomp's name, the header's) {wrong}"
    assert sum(named[n] in names for n, names in header.items()) > 300


# --- aarch64: the busybox the rootfs is made of -----------------------------------------

ELF_MACHINES = {"x86_64": 62, "aarch64": 183}     # e_machine, from <elf.h> (EM_X86_64, EM_AARCH64)
PT_INTERP = 3


def elf_facts(path: str) -> tuple[int, bool]:
    """(e_machine, has a PT_INTERP program header) of a 64-bit little-endian ELF file (elf(5))."""
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path}: not a 64-bit LE ELF"
    e_machine = struct.unpack_from("<H", data, 18)[0]
    e_phoff = struct.unpack_from("<Q", data, 32)[0]
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    types = [struct.unpack_from("<I", data, e_phoff + i * e_phentsize)[0] for i in range(e_phnum)]
    return e_machine, PT_INTERP in types


def test_busybox_is_static_and_built_for_this_machine():
    """The rootfs holds busybox and no C library: the host's busybox must be a
    static program (no PT_INTERP, no dynamic loader) of this machine's type."""
    from labkit import rootfs
    machine, dynamic = elf_facts(os.path.realpath(rootfs.BUSYBOX))
    assert machine == ELF_MACHINES[os.uname().machine]
    assert not dynamic, f"{rootfs.BUSYBOX} is dynamically linked: install busybox-static"
    # The same check on a dynamic program of this machine tells the difference.
    assert elf_facts(os.path.realpath(shutil.which("ls"))) == (ELF_MACHINES[os.uname().machine], True)


def test_busybox_applets_are_relative_paths_it_really_runs(tmp_path):
    """Applets come from the binary itself (``--list-full``), not from a list
    written for one machine; each is linked by name and busybox runs it by argv[0]."""
    from labkit import rootfs
    applets = rootfs.applets()
    assert "bin/sh" in applets and "bin/busybox" not in applets
    assert all(not a.startswith("/") and ".." not in a.split("/") for a in applets)
    for applet in ("bin/sh", "bin/echo"):
        link = tmp_path / os.path.basename(applet)
        link.symlink_to(os.path.realpath(rootfs.BUSYBOX))
        args = ["-c", "echo via-$0"] if applet == "bin/sh" else ["via-echo"]
        out = subprocess.run([str(link), *args], capture_output=True, text=True, check=True).stdout
        assert out.startswith("via-"), out
