"""Network namespace (labkit/net.py) on the real kernel: lo only, the bridge, veth,
addresses, routes, two servers on port 80, and release on every path."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import labkit_cli
from labkit import kernel, net, spawn
from labkit.errors import LabkitError, UsageError

BUSYBOX = "/bin/busybox"
# busybox 1.35's wget segfaults with -T: fetches are bounded by spawn.run's timeout instead.


def link_names(output: str) -> list[str]:
    """Device names from `ip -o link` output ("2: eth0@if7: <...")."""
    return [line.split(":")[1].strip().split("@")[0] for line in output.splitlines() if line.strip()]


def wait_for_port(address: str, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def http_get(address: str, path: str = "/", timeout: float = 3.0) -> str:
    """A bounded HTTP/1.0 GET from the host's namespace; the body."""
    with socket.create_connection((address, 80), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()


def bridge_is_gone_or_in_use() -> bool:
    """labkit0 must not outlive its last port (another session's container may hold it)."""
    host = net.links()
    bridge = [link for link in host if link["name"] == net.BRIDGE]
    return not bridge or any(link["master"] == net.BRIDGE for link in host)


@pytest.mark.parametrize("text, expected", [
    ("10.88.0.2", "10.88.0.2"), ("10.88.0.2/16", "10.88.0.2"), (" 10.88.200.7/16 ", "10.88.200.7"),
])
def test_parse_address_accepts_the_lab_network(text, expected):
    assert str(net.parse_address(text)) == expected


@pytest.mark.parametrize("text, why", [
    ("10.89.0.2", "outside the lab network"), ("192.168.1.5/16", "outside the lab network"),
    ("10.88.0.300/16", "not an IPv4 address"), ("10.88.0.5/40", "not an IPv4 address"),
    ("ten.88.0.5", "not an IPv4 address"), ("", "not an IPv4 address"),
    ("10.88.0.5/24", "prefix /24 differs"), ("10.88.0.1", "reserved"),
    ("10.88.0.0", "reserved"), ("10.88.255.255/16", "reserved"),
])
def test_parse_address_rejects_with_a_clear_reason(text, why):
    with pytest.raises(UsageError) as e:
        net.parse_address(text)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_names_follow_the_address():
    address = ipaddress.IPv4Address("10.88.255.254")
    assert net.netns_name(address) == "labkit-10.88.255.254"
    assert net.veth_name(address) == "lk-255-254"
    assert len(net.veth_name(address) + "c") < 16          # IFNAMSIZ, with the peer's suffix


def test_net_none_has_only_lo_and_it_is_up(no_leaks):
    with spawn.spawn(["sleep", "30"], [net.NetNamespace()]) as proc:
        inode = kernel.ns_inode(proc.pid, "net")
    assert inode != kernel.ns_inode("self", "net")
    result = spawn.run(["ip", "-o", "link"], [net.NetNamespace()], timeout=10)
    assert link_names(result.stdout) == ["lo"] and "UP" in result.stdout, result.stderr
    result = spawn.run(["ip", "-o", "-4", "addr"], [net.NetNamespace()], timeout=10)
    assert "127.0.0.1/8" in result.stdout, result.stderr


def test_net_none_loopback_serves_inside_only(no_leaks):
    # A server on 127.0.0.1:80 inside is reached from inside; the host's 127.0.0.1:80 stays closed.
    with tempfile.TemporaryDirectory() as www:
        with open(f"{www}/index.html", "w") as f:
            f.write("inside\n")
        script = (f"{BUSYBOX} httpd -f -p 127.0.0.1:80 -h {www} & sleep 0.3; "
                  f"{BUSYBOX} wget -q -O - http://127.0.0.1/; sleep 1; kill $!")
        with spawn.spawn(["sh", "-c", script], [net.NetNamespace()]) as proc:
            time.sleep(0.5)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", 80), timeout=2).close()
            proc.wait(20)
    assert proc.stdout == "inside\n", proc.stderr


def test_bridge_gives_eth0_address_route_and_releases_all(no_leaks):
    prim = net.BridgeNetwork()
    script = "ip -o link; ip -o -4 addr; ip route; cat"
    with spawn.spawn(["sh", "-c", script + " >/dev/null; exec sleep 30"], [prim]) as proc:
        address, veth, netns = prim.address, prim.host_veth, prim.netns
        host = {link["name"]: link for link in net.links()}
        inside = {link["name"]: link for link in net.links(netns)}
        routes_inside = net.routes(netns)
        assert os.path.ismount(os.path.join(net.NETNS_DIR, netns))
        assert os.stat(os.path.join(net.NETNS_DIR, netns)).st_ino == kernel.ns_inode(proc.pid, "net")
    assert sorted(inside) == ["eth0", "lo"]
    assert inside["eth0"]["addresses"] == [f"{address}/16"] and inside["eth0"]["state"] == "UP"
    assert "default via 10.88.0.1 dev eth0" in routes_inside
    assert host[veth]["master"] == net.BRIDGE and host[veth]["kind"] == "veth"
    assert host[net.BRIDGE]["addresses"] == ["10.88.0.1/16"]
    # veth(4): the host end's peer (IFLA_LINK) is eth0's index inside.
    assert host[veth]["peer_index"] == inside["eth0"]["index"]
    after = {link["name"] for link in net.links()}
    assert veth not in after and veth + "c" not in after
    assert not os.path.exists(os.path.join(net.NETNS_DIR, netns))
    assert bridge_is_gone_or_in_use()
    prim.release()                                   # safe twice


def test_addresses_are_the_next_free_ones_in_order(no_leaks):
    taken = {ipaddress.IPv4Address(n.removeprefix("labkit-")) for n in net.lab_namespaces()}
    expected = [a for a in net._addresses_from(net.FIRST_ADDRESS) if a not in taken][:2]
    a, b = net.BridgeNetwork(), net.BridgeNetwork()
    with spawn.spawn(["sleep", "30"], [a]), spawn.spawn(["sleep", "30"], [b]):
        assert [a.address, b.address] == expected
        assert {a.netns, b.netns} <= set(net.lab_namespaces())


def test_requested_address_in_use_is_refused_and_leaves_nothing(no_leaks):
    first = net.BridgeNetwork("10.88.7.7/16")
    with spawn.spawn(["sleep", "30"], [first]):
        second = net.BridgeNetwork("10.88.7.7")
        with pytest.raises(LabkitError, match="10.88.7.7 is in use"):
            spawn.spawn(["true"], [second])
        assert os.path.ismount(os.path.join(net.NETNS_DIR, "labkit-10.88.7.7"))   # still first's
        assert first.address == ipaddress.IPv4Address("10.88.7.7")


def test_two_web_servers_on_port_80_each_on_its_own_address(no_leaks):
    with tempfile.TemporaryDirectory() as www:
        os.makedirs(f"{www}/cgi-bin")
        with open(f"{www}/cgi-bin/who", "w") as f:
            f.write("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n"
                    "echo \"$(ip -o -4 addr show eth0 | awk '{print $4}') to $REMOTE_ADDR\"\n")
        os.chmod(f"{www}/cgi-bin/who", 0o755)
        web1, web2 = net.BridgeNetwork(), net.BridgeNetwork()
        server = [BUSYBOX, "httpd", "-f", "-p", "0.0.0.0:80", "-h", www]
        with spawn.spawn(server, [web1]), spawn.spawn(server, [web2]):
            for w in (web1, web2):
                wait_for_port(str(w.address), 80)
            answers = [http_get(str(w.address), "/cgi-bin/who").strip() for w in (web1, web2)]
            assert answers == [f"{web1.address}/16 to 10.88.0.1", f"{web2.address}/16 to 10.88.0.1"]
            # The host's own port 80 is untouched: nothing listens there.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", 80), timeout=2).close()
            # Container to container, across the bridge.
            client = net.BridgeNetwork()
            fetch = f"{BUSYBOX} wget -q -O - http://{web1.address}/cgi-bin/who"
            result = spawn.run(["sh", "-c", fetch], [client], timeout=20)
            assert result.stdout.strip() == f"{web1.address}/16 to {client.address}", result.stderr


def test_release_without_prepare_is_safe():
    prim = net.BridgeNetwork()
    prim.release()
    prim.release()


def test_failed_command_releases_everything(no_leaks):
    prim = net.BridgeNetwork()
    with pytest.raises(LabkitError):
        spawn.run(["/no/such/command"], [prim])
    assert prim.netns is None and bridge_is_gone_or_in_use()


def test_cli_net_none_is_default_and_bridge_shows_eth0(no_leaks):
    r = labkit_cli("run", "--ns", "pid,net", "--", "ip", "-o", "link")
    assert r.returncode == 0 and link_names(r.stdout) == ["lo"], r.stderr
    r = labkit_cli("run", "--ns", "pid,net", "--net", "bridge", "--ip", "10.88.9.9/16", "--",
                   "ip", "-o", "-4", "addr", "show", "eth0")
    assert r.returncode == 0 and "10.88.9.9/16" in r.stdout, r.stderr


@pytest.mark.parametrize("args, message", [
    (["--ip", "10.88.0.5"], "--ip needs --network bridge"),
    (["--net", "none", "--ip", "10.88.0.5/16"], "--ip needs --network bridge"),
    (["--net", "bridge", "--ip", "10.1.2.3/16"], "outside the lab network"),
    (["--net", "bridge", "--ip", "10.88.0.5/33"], "not an IPv4 address/prefix"),
    (["--net", "bridge", "--ip", "10.88.0.5/8"], "prefix /8 differs"),
    (["--net", "bridge", "--ns", "pid"], "needs a network namespace"),
    (["--net", "wifi"], "unknown network mode"),
])
def test_cli_bad_network_input_is_one_line_exit_125(args, message, no_leaks):
    r = labkit_cli("run", *args, "--", "true")
    assert r.returncode == 125
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_cli_address_in_use_is_one_line_exit_125(no_leaks):
    holder = subprocess.Popen([sys.executable, "-m", "labkit", "run", "--ns", "net", "--net", "bridge",
                               "--ip", "10.88.8.8", "--", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(os.path.join(net.NETNS_DIR, "labkit-10.88.8.8")):
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
        r = labkit_cli("run", "--ns", "net", "--net", "bridge", "--ip", "10.88.8.8/16", "--", "true")
        assert r.returncode == 125 and "10.88.8.8 is in use" in r.stderr and r.stderr.count("\n") == 1
    finally:
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=10) == 128 + signal.SIGTERM


def test_cli_net_none_does_not_load_netlink():
    code = ("import sys; from labkit import cli; cli.main(['run', '--ns', 'net', '--net', 'none', '--', 'true']);"
            "print('pyroute2' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
