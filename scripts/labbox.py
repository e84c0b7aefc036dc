"""The lab VM as files a class can use without any remote box service: `./lab vm box`.

    ./lab vm box [--release trixie|bookworm] [--arch amd64|arm64] [--out DIR] [--base-url URL]

From the same builder as `./lab vm build` (scripts/labvm.py: the Debian root
debootstrapped once, then the provisioning Vagrant runs, vagrant/provision.sh),
without the test suite's tools, plus what a Vagrant base box needs: the user
vagrant (password vagrant, passwordless sudo, Vagrant's insecure public key,
which `vagrant up` replaces), openssh-server with host keys made at first boot,
systemd-resolved for DNS from DHCP, a copy of this checkout at /labkit (the
Vagrantfile's synced folder covers it), and a disk that boots by itself: an MBR
partition table, the root (ext4, label labkit-root), a swap partition, and GRUB
(boot.img in the first 440 bytes, core.img in the gap before the first partition).
It writes, in DIR (default vagrant/, where the Vagrantfile finds the boxes):

  labkit-V-libvirt.box      box.img (qcow2), metadata.json {"provider", "format",
                            "virtual_size" in GB} and a Vagrantfile (vagrant-libvirt's
                            box format, its example_box/README.md)
  labkit-V-virtualbox.box   box.ovf, box-disk001.vmdk (streamOptimized), metadata.json
                            {"provider": "virtualbox"} and a Vagrantfile with the NIC's MAC
                            (Vagrant's box format: developer.hashicorp.com/vagrant/docs/boxes/format)
  labkit.json               the box catalog: name, versions[].providers[] with url,
                            checksum_type sha256, checksum, architecture (Vagrant's
                            BoxMetadata); a version already in it is kept, so
                            `vagrant box update` sees the new one
  labkit-V-wsl.tar.gz       the same root for `wsl --import` (/etc/wsl.conf: systemd=true)
  labkit-V-user-data        cloud-init user-data (vagrant/cloud-init/user-data with this
                            checkout inside it) for a stock Debian 13 cloud image

V is labkit's version (labkit/__init__.py) and the build time, e.g. 0.1.0.202612011530,
which the Vagrantfile's box_version "~> 0.1.0" accepts.

The boxes are amd64 (x86_64 hosts: Linux, Windows, Intel Macs), built on an x86_64
machine: building one machine's root on another would need every package's maintainer
scripts run under emulation (qemu-user), which this script does not do, so --arch arm64
on x86_64 stops with one line. An arm64 box (Apple Silicon under VirtualBox 7.1, UTM or
vagrant-qemu) would be built by this script on an arm64 Linux host or VM, but its disk
boots by UEFI (an EFI system partition holding GRUB's arm64-efi image), a layout this
script does not write yet: there too it stops with one line. Apple Silicon runs the
lab with Lima (lima/labkit.yaml: Debian's own arm64 cloud image), which needs no box.
"""

from __future__ import annotations

import base64
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET

import labvm
from labvm import REPO, fail, log, sh

BOX_NAME = "labkit/lab"             # the Vagrantfile's BOX_NAME
DISK_GIB = 20                       # the box's disk: root, then SWAP_MIB of swap
SWAP_MIB = 1024
ROOT_START = 1 << 20                # the first partition at 1 MiB; GRUB's core.img before it
MEMORY_MIB, CPUS = 4096, 2          # the Vagrantfile's defaults, also the OVF's
VBOX_MAC = "080027A1B2C3"           # VirtualBox's OUI (08:00:27); Vagrant sets it again (base_mac)
# Debian's architecture names and the machine each runs on (uname -m).
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
BOX_PACKAGES = "openssh-server systemd-resolved grub-pc-bin"
SSH_KEYS_UNIT = """\
[Unit]
Description=labkit: this VM's own SSH host keys, made at its first boot (a box ships none)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""
FSTAB = """\
LABEL=labkit-root / ext4 errors=remount-ro 0 1
LABEL=labkit-swap none swap sw,nofail 0 0
"""
# GRUB's configuration: the /vmlinuz and /initrd.img links Debian's kernel packages keep
# pointing at the newest kernel (linux-base, kernel-img.conf(5)), so an upgrade needs no update-grub.
GRUB_CFG = """\
set timeout=1
linux /vmlinuz root=LABEL=labkit-root ro console=tty0 console=ttyS0,115200
initrd /initrd.img
boot
"""
WSL_CONF = """\
# labkit's lab VM under WSL2 (wsl.conf(5) as Microsoft documents it: learn.microsoft.com/windows/wsl/wsl-config)
[boot]
systemd=true

[user]
default=root

[network]
hostname=labkit
generateResolvConf=true
"""
BOX_VAGRANTFILE = {
    "libvirt": """\
# The labkit box's own defaults (the project's vagrant/Vagrantfile sets the rest).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.driver = "kvm"
    lv.disk_bus = "virtio"
  end
end
""",
    "virtualbox": f"""\
# The labkit box's own defaults (the project's vagrant/Vagrantfile sets the rest).
Vagrant.configure("2") do |config|
  config.vm.base_mac = "{VBOX_MAC}"
end
""",
}


def labkit_version() -> str:
    with open(os.path.join(REPO, "labkit", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def vagrant_public_key() -> str:
    """Vagrant's insecure public key, as the installed Vagrant ships it (its keys/vagrant.pub):
    the key `vagrant up` logs in with once, before it puts a key of the VM's own."""
    found = sorted(glob.glob("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub")
                   + glob.glob("/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub"))
    if not found:
        fail("vagrant's insecure public key (keys/vagrant.pub) not found: install vagrant "
             "(scripts/setup.sh --test) and run ./lab vm box again")
    with open(found[-1]) as f:
        return f.read()


def checkout_files() -> list[str]:
    """The files git tracks in this checkout (what a clone of it would have), as they are now."""
    out = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], check=True, capture_output=True).stdout
    return [f for f in out.decode().split("\0") if f and os.path.isfile(os.path.join(REPO, f))]


def checkout_tarball(path: str) -> None:
    sh("tar", "-C", REPO, "--owner=0", "--group=0", "--numeric-owner", "-czf", path,
       "--null", "-T", "-", input="\0".join(checkout_files()).encode())


def write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Box:
    """One build: the provisioned root, then every artefact made from it."""

    def __init__(self, release: str, arch: str, out: str, base_url: str | None) -> None:
        self.release, self.arch, self.out = release, arch, out
        self.base_url = base_url.rstrip("/") if base_url else "file://" + os.path.abspath(out)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M")
        self.version = f"{labkit_version()}.{stamp}"
        self.image = labvm.Image(release)

    def name(self, what: str) -> str:
        return f"{self.out}/labkit-{self.version}-{what}"

    def build(self) -> list[str]:
        started = time.monotonic()
        os.makedirs(self.image.dir, exist_ok=True)
        os.makedirs(self.out, exist_ok=True)
        base = self.image.base_root()
        work = tempfile.mkdtemp(prefix="box-", dir=self.image.dir)
        try:
            root, source = f"{work}/root", f"{work}/labkit-src.tar.gz"
            checkout_tarball(source)           # this checkout, for the box's /labkit and the user-data
            log(f"copying the fresh {self.release} root")
            sh("cp", "-a", "--reflink=auto", base, root)
            self.image.configure(root)
            self.image.provision(root, test_tools=False, then=self.box_script())
            self.make_box_root(root, source)
            raw = self.make_disk(work, root)
            made = [self.libvirt_box(work, raw), self.virtualbox_box(work, raw)]
            os.unlink(raw)
            made.append(self.catalog(made))
            made.append(self.wsl_tarball(root))
            made.append(self.user_data(source))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for path in made:
            log(f"wrote {path} ({os.path.getsize(path) / 2**20:.0f} MiB)")
        log(f"box {self.version} built in {time.monotonic() - started:.0f} s")
        return made

    def box_script(self) -> str:
        """Run in the chroot while the network is there: a Vagrant base box's additions."""
        return (f"apt-get install -y -qq --no-install-recommends {BOX_PACKAGES} >/dev/null; "
                "id vagrant >/dev/null 2>&1 || useradd -m -s /bin/bash -G sudo vagrant; "
                "echo vagrant:vagrant | chpasswd; passwd -l root >/dev/null; ")

    def make_box_root(self, root: str, source: str) -> None:
        """What a base box has beyond the lab VM image: Vagrant's login, SSH, its own disk,
        /labkit (``source``: this checkout's tarball)."""
        write(f"{root}/etc/sudoers.d/vagrant", "vagrant ALL=(ALL) NOPASSWD:ALL\n", 0o440)
        ssh = f"{root}/home/vagrant/.ssh"
        write(f"{ssh}/authorized_keys", vagrant_public_key(), 0o600)
        write(f"{root}/etc/systemd/system/labkit-ssh-host-keys.service", SSH_KEYS_UNIT)
        write(f"{root}/etc/fstab", FSTAB)
        for key in glob.glob(f"{root}/etc/ssh/ssh_host_*"):
            os.unlink(key)                         # every VM made from the box gets keys of its own
        # The job unit runs only for ./lab vm's boots (labkit.job=1); a box has no use for it.
        for rel in ("etc/systemd/system/labkit-vm-job.service", "usr/local/sbin/labkit-vm-job",
                    "etc/systemd/system/multi-user.target.wants/labkit-vm-job.service"):
            if os.path.lexists(f"{root}/{rel}"):
                os.unlink(f"{root}/{rel}")
        os.makedirs(f"{root}/etc/systemd/system/multi-user.target.wants", exist_ok=True)
        os.symlink("/etc/systemd/system/labkit-ssh-host-keys.service",
                   f"{root}/etc/systemd/system/multi-user.target.wants/labkit-ssh-host-keys.service")
        # This checkout at /labkit, where the venv's editable labkit points (Vagrant's synced
        # folder covers it with the student's clone; WSL and a bare boot use this copy).
        sh("tar", "-C", f"{root}/labkit", "-xzf", source)
        self.image.chroot(root, "chown -R vagrant:vagrant /home/vagrant/.ssh && chmod 700 /home/vagrant/.ssh; "
                          "systemctl enable --quiet systemd-resolved; "
                          "mkdir -p /boot/grub && cp -a /usr/lib/grub/i386-pc /boot/grub/ && "
                          "grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img "
                          "-p '(hd0,msdos1)/boot/grub' biosdisk part_msdos ext2 linux normal")
        write(f"{root}/boot/grub/grub.cfg", GRUB_CFG)

    def make_disk(self, work: str, root: str) -> str:
        """A raw disk: an MBR with two partitions, GRUB's core.img in the gap before the first,
        the root partition (mkfs.ext4 -d: no loop device), the swap partition. Returns its path."""
        log("making the box disk (MBR, GRUB, ext4 root, swap)")
        size, swap = DISK_GIB << 30, SWAP_MIB << 20
        root_size = size - ROOT_START - swap
        raw, part, swp = f"{work}/disk.raw", f"{work}/root.ext4", f"{work}/swap.img"
        sh("truncate", "-s", str(size), raw)
        with open(raw, "r+b") as f:
            f.write(mbr([(True, 0x83, ROOT_START, root_size), (False, 0x82, ROOT_START + root_size, swap)]))
        sh("truncate", "-s", str(root_size), part)
        sh("mkfs.ext4", "-q", "-F", "-L", "labkit-root", "-d", root, part)
        sh("truncate", "-s", str(swap), swp)
        sh("mkswap", "-L", "labkit-swap", swp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for image, offset in ((part, ROOT_START), (swp, ROOT_START + root_size)):
            sh("dd", f"if={image}", f"of={raw}", "bs=4M", f"seek={offset}", "oflag=seek_bytes",
               "conv=sparse,notrunc", "status=none")
            os.unlink(image)
        with open(f"{root}/usr/lib/grub/i386-pc/boot.img", "rb") as f:
            boot = f.read()
        with open(f"{root}/boot/grub/i386-pc/core.img", "rb") as f:
            core = f.read()
        if len(boot) != 512 or 512 + len(core) > ROOT_START:
            fail(f"GRUB's boot.img ({len(boot)} bytes) or core.img ({len(core)} bytes) does not fit before 1 MiB")
        with open(raw, "r+b") as f:
            f.write(boot[:440])                    # the code; the signature and partition table stay
            f.seek(512)
            f.write(core)                          # diskboot.img's blocklist names sector 2 on (grub-mkimage)
        return raw

    def libvirt_box(self, work: str, raw: str) -> str:
        folder = f"{work}/libvirt"
        os.makedirs(folder)
        log("libvirt box: qcow2")
        sh("qemu-img", "convert", "-c", "-O", "qcow2", raw, f"{folder}/box.img")
        write(f"{folder}/metadata.json", json.dumps({"provider": "libvirt", "format": "qcow2",
                                                     "virtual_size": DISK_GIB}) + "\n")
        write(f"{folder}/Vagrantfile", BOX_VAGRANTFILE["libvirt"])
        box = self.name("libvirt.box")
        sh("tar", "-C", folder, "--owner=0", "--group=0", "-cf", box, "metadata.json", "Vagrantfile", "box.img")
        return box

    def virtualbox_box(self, work: str, raw: str) -> str:
        folder = f"{work}/virtualbox"
        os.makedirs(folder)
        log("virtualbox box: VMDK (streamOptimized) and OVF")
        vmdk = f"{folder}/box-disk001.vmdk"
        sh("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk)
        write(f"{folder}/box.ovf", ovf_descriptor(os.path.basename(vmdk), os.path.getsize(vmdk), DISK_GIB << 30))
        write(f"{folder}/metadata.json", json.dumps({"provider": "virtualbox"}) + "\n")
        write(f"{folder}/Vagrantfile", BOX_VAGRANTFILE["virtualbox"])
        box = self.name("virtualbox.box")
        sh("tar", "-C", folder, "--owner=0", "--group=0", "-cf", box,
           "box.ovf", "box-disk001.vmdk", "metadata.json", "Vagrantfile")
        return box

    def catalog(self, boxes: list[str]) -> str:
        """labkit.json: this version's boxes added to the versions already listed."""
        path = f"{self.out}/labkit.json"
        try:
            with open(path) as f:
                catalog = json.load(f)
        except FileNotFoundError:
            catalog = {"name": BOX_NAME, "description": "labkit's lab VM (Debian, systemd, cgroup v2), "
                                                        "built by ./lab vm box", "versions": []}
        providers = [{"name": provider, "url": f"{self.base_url}/{os.path.basename(box)}",
                      "checksum_type": "sha256", "checksum": sha256(box),
                      "architecture": self.arch, "default_architecture": True}
                     for provider, box in zip(("libvirt", "virtualbox"), boxes)]
        catalog["versions"] = [v for v in catalog["versions"] if v["version"] != self.version]
        catalog["versions"].append({"version": self.version, "description": f"Debian {self.release}",
                                    "providers": providers})
        write(path, json.dumps(catalog, indent=2) + "\n")
        return path

    def wsl_tarball(self, root: str) -> str:
        """The same root for `wsl --import`: WSL brings the kernel, the network and DNS."""
        log("WSL tarball")
        # JupyterLab on 127.0.0.1: WSL forwards the distribution's localhost to Windows' own,
        # and 0.0.0.0 would be the Windows host's network under WSL's mirrored networking.
        self.image.chroot(root, "LABKIT_JUPYTER_IP=127.0.0.1 LABKIT_VENV=/opt/labkit/venv "
                          "bash /labkit/scripts/jupyter-service.sh >/dev/null")
        write(f"{root}/etc/wsl.conf", WSL_CONF)
        write(f"{root}/etc/fstab", "# WSL mounts the root itself (wsl --import)\n")
        for unit in ("systemd-networkd.service", "systemd-resolved.service", "labkit-ssh-host-keys.service"):
            for link in glob.glob(f"{root}/etc/systemd/system/*.wants/{unit}"):
                os.unlink(link)
        if os.path.lexists(f"{root}/etc/resolv.conf"):
            os.unlink(f"{root}/etc/resolv.conf")   # WSL writes its own (generateResolvConf)
        tarball = self.name("wsl.tar.gz")
        sh("tar", "-C", root, "--numeric-owner", "--xattrs", "--xattrs-include=security.capability",
           "--exclude=./boot/*", "-czf", tarball, ".")
        return tarball

    def user_data(self, source: str) -> str:
        """vagrant/cloud-init/user-data with this checkout (``source``, its tarball) in it
        (write_files, base64): the cloud image needs the package registries only."""
        with open(os.path.join(REPO, "vagrant", "cloud-init", "user-data")) as f:
            text = f.read()
        with open(source, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        entry = ("  - path: /var/lib/labkit/labkit-src.tar.gz\n"
                 "    permissions: '0600'\n"
                 "    encoding: b64\n"
                 f"    content: {data}\n")
        marker = "write_files:\n"
        if marker not in text:
            fail("vagrant/cloud-init/user-data has no write_files: list to put the checkout in")
        path = self.name("user-data")
        write(path, text.replace(marker, marker + entry, 1))
        return path


def mbr(partitions: list[tuple[bool, int, int, int]]) -> bytes:
    """A legacy MBR (UEFI specification, 5.2.1 "Legacy Master Boot Record"): 440 bytes of boot
    code (zero here; GRUB's go in later), a 4-byte disk signature, 2 unused bytes, four 16-byte
    partition records (boot indicator 0x80 or 0, starting CHS, OS type, ending CHS, starting
    LBA, size in LBA, little-endian), then 0x55 0xAA. Each partition is (bootable, type,
    start, size) in bytes; CHS is given for 255 heads and 63 sectors per track, and as
    0xFFFFFE (the largest) past what CHS can address, as firmware reads the LBA fields."""
    def chs(lba: int) -> bytes:
        cylinder, rest = divmod(lba, 255 * 63)
        if cylinder > 1023:
            return b"\xfe\xff\xff"
        head, sector = divmod(rest, 63)
        return bytes((head, (sector + 1) | ((cylinder >> 8) << 6), cylinder & 0xFF))

    records = b""
    for bootable, kind, start, size in partitions:
        first, count = start // 512, size // 512
        records += (bytes((0x80 if bootable else 0,)) + chs(first) + bytes((kind,)) + chs(first + count - 1)
                    + first.to_bytes(4, "little") + count.to_bytes(4, "little"))
    return bytes(440) + os.urandom(4) + bytes(2) + records.ljust(64, b"\0") + b"\x55\xaa"


def ovf_descriptor(vmdk: str, vmdk_bytes: int, capacity: int) -> str:
    """An OVF 1.0 envelope (DMTF DSP0243 1.0): References (the VMDK), DiskSection, NetworkSection
    (NAT), and one VirtualSystem whose VirtualHardwareSection holds the CPUs, the memory,
    a SATA (AHCI) controller, the disk on it and an Intel PRO/1000 NIC on NAT. Each Item's
    rasd elements are in the alphabetical order of CIM_ResourceAllocationSettingData's schema."""
    ovf = "http://schemas.dmtf.org/ovf/envelope/1"
    rasd = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    vssd = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    for prefix, uri in (("ovf", ovf), ("rasd", rasd), ("vssd", vssd)):
        ET.register_namespace(prefix, uri)     # ovf: on elements and attributes alike (no default namespace)

    def el(parent, tag, text=None, ns=ovf, **attrs):
        e = ET.SubElement(parent, f"{{{ns}}}{tag}", {f"{{{ovf}}}{k}": str(v) for k, v in attrs.items()})
        if text is not None:
            e.text = str(text)
        return e

    env = ET.Element(f"{{{ovf}}}Envelope", {f"{{{ovf}}}version": "1.0",
                                            "{http://www.w3.org/XML/1998/namespace}lang": "en-US"})
    refs = el(env, "References")
    el(refs, "File", id="file1", href=vmdk, size=vmdk_bytes)
    disks = el(env, "DiskSection")
    el(disks, "Info", "The disk of the labkit lab VM")
    el(disks, "Disk", capacity=capacity, diskId="vmdisk1", fileRef="file1",
       format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized")
    nets = el(env, "NetworkSection")
    el(nets, "Info", "The network the VM's NIC is on")
    el(el(nets, "Network", name="NAT"), "Description", "NAT (the Vagrantfile forwards JupyterLab's port)")
    vs = el(env, "VirtualSystem", id="labkit")
    el(vs, "Info", "labkit's lab VM")
    osec = el(vs, "OperatingSystemSection", id=96)            # CIM_OperatingSystem: 96 = Debian 64-bit
    el(osec, "Info", "The guest operating system")
    el(osec, "Description", "Debian_64")
    hw = el(vs, "VirtualHardwareSection")
    el(hw, "Info", "CPUs, memory, disk controller, disk, NIC")
    system = el(hw, "System")
    for tag, text in (("ElementName", "Virtual Hardware Family"), ("InstanceID", 0),
                      ("VirtualSystemIdentifier", "labkit"), ("VirtualSystemType", "virtualbox-2.2")):
        el(system, tag, text, ns=vssd)
    items = [
        {"AllocationUnits": "hertz * 10^6", "Caption": f"{CPUS} virtual CPU", "Description": "Number of virtual CPUs",
         "ElementName": f"{CPUS} virtual CPU", "InstanceID": 1, "ResourceType": 3, "VirtualQuantity": CPUS},
        {"AllocationUnits": "byte * 2^20", "Caption": f"{MEMORY_MIB} MB of memory", "Description": "Memory Size",
         "ElementName": f"{MEMORY_MIB} MB of memory", "InstanceID": 2, "ResourceType": 4,
         "VirtualQuantity": MEMORY_MIB},
        {"Address": 0, "Caption": "sataController0", "Description": "SATA Controller",
         "ElementName": "sataController0", "InstanceID": 3, "ResourceSubType": "AHCI", "ResourceType": 20},
        {"AddressOnParent": 0, "Caption": "disk1", "Description": "Disk Image", "ElementName": "disk1",
         "HostResource": "/disk/vmdisk1", "InstanceID": 4, "Parent": 3, "ResourceType": 17},
        {"AutomaticAllocation": "true", "Caption": "Ethernet adapter on 'NAT'", "Connection": "NAT",
         "ElementName": "Ethernet adapter on 'NAT'", "InstanceID": 5, "ResourceSubType": "E1000",
         "ResourceType": 10},
    ]
    for item in items:
        node = el(hw, "Item")
        for tag in sorted(item):
            el(node, tag, item[tag], ns=rasd)
    ET.indent(env)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(env, encoding="unicode") + "\n"


def main(release: str, arch: str, out: str, base_url: str | None) -> int:
    if os.geteuid() != 0:
        fail("needs root (debootstrap, chroot): run it as root")
    machine = platform.machine()
    if ARCHES[arch] != machine:
        fail(f"box --arch {arch}: this machine is {machine}, and a box is built on its own architecture: "
             f"run ./lab vm box --arch {arch} on an {ARCHES[arch]} Linux host or VM")
    if arch != "amd64":
        fail(f"box --arch {arch}: an {arch} VM boots by UEFI (an EFI system partition with GRUB's "
             f"{arch}-efi image), a disk this script does not lay out yet; Apple Silicon runs the lab "
             "with Lima (lima/labkit.yaml), which needs no box")
    for tool in ("debootstrap", "qemu-img", "mkfs.ext4", "mkswap", "unshare", "git"):
        if not shutil.which(tool):
            fail(f"{tool} not found: run scripts/setup.sh --vm to install what the lab VM needs")
    Box(release, arch, out, base_url).build()
    return 0


if __name__ == "__main__":            # python3 scripts/labbox.py: the same as ./lab vm box
    import sys
    sys.exit(labvm.main(["box", *sys.argv[1:]]))
