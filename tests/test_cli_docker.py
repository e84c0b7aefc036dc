"""`labkit run` speaks Docker: each option observed inside a real container, and
each refusal one line, exit 125, the host unchanged (the no_leaks fixture)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

import labkit
from conftest import REPO, labkit_cli
from labkit import caps, cli, container, seccomp
from labkit.container import Container, ContainerSpec
from labkit.errors import UsageError
from labkit.user import IdMap


def cli_run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`labkit ARGS` with the environment ``env`` added to ours."""
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


def one_line_125(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 125, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("labkit: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    for word in words:
        assert word in r.stderr, r.stderr


def status_lines(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


# --- each option, inside a real container --------------------------------------

def test_env_env_file_and_labkit_s_own_value(tmp_path, no_leaks):
    env_file = tmp_path / "vars"
    env_file.write_text("# a comment\n\n  SPACED=a b  \nFROM_FILE=file\nOVERRIDDEN=file\nFROM_HOST\n")
    r = cli_run("run", "--rm", "--env-file", str(env_file), "-e", "A=1", "--env", "OVERRIDDEN=cli",
                "-e", "FROM_HOST_TOO", "-e", "LABKIT_TEST_UNSET", "--", "env",
                env={"FROM_HOST": "host", "FROM_HOST_TOO": "host too"})
    assert r.returncode == 0, r.stderr
    seen = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert seen["A"] == "1" and seen["FROM_FILE"] == "file" and seen["OVERRIDDEN"] == "cli"   # -e wins
    assert seen["SPACED"] == "a b  "                 # docker's format: the value as written
    assert seen["FROM_HOST"] == "host" and seen["FROM_HOST_TOO"] == "host too"
    assert "LABKIT_TEST_UNSET" not in seen           # K alone, unset in labkit's environment: left out
    assert seen["PATH"] == container.DEFAULT_ENV["PATH"]


def test_a_bad_env_file_line_is_one_line_naming_it(tmp_path, no_leaks):
    env_file = tmp_path / "vars"
    env_file.write_text("GOOD=1\nBAD NAME=2\n")
    one_line_125(labkit_cli("run", "--env-file", str(env_file), "--", "true"), f"{env_file} line 2")


def test_workdir_is_made_if_missing_and_is_the_cwd(no_leaks):
    r = labkit_cli("run", "-w", "/made/here", "--", "sh", "-c", "pwd; ls -ld /made/here")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "/made/here" and r.stdout.splitlines()[1].startswith("drwx")
    # ... also under a read-only root: it is made before the root turns read-only (as docker).
    r = labkit_cli("run", "--read-only", "--workdir", "/ro/here", "--", "pwd")
    assert (r.returncode, r.stdout) == (0, "/ro/here\n"), r.stderr


def test_user_runs_the_command_as_that_uid_with_no_capabilities(no_leaks):
    r = labkit_cli("run", "-u", "1000:1001", "--", "sh", "-c",
                   "id -u; id -g; grep -E '^(Cap|NoNewPrivs)' /proc/self/status; touch /tmp/f; stat -c %u:%g /tmp/f")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["1000", "1001"] and lines[-1] == "1000:1001"
    sets = status_lines(r.stdout)
    # capabilities(7): all three UIDs nonzero -> permitted, effective and ambient cleared.
    assert int(sets["CapEff"], 16) == int(sets["CapPrm"], 16) == int(sets["CapAmb"], 16) == 0
    assert int(sets["CapBnd"], 16) == caps.mask_of(caps.DOCKER_DEFAULT)
    assert sets["NoNewPrivs"] == "1"
    # Docker: a UID alone gets group 0; -u 0 is root with Docker's 14.
    r = labkit_cli("run", "--user", "1000", "--", "id", "-g")
    assert (r.returncode, r.stdout) == (0, "0\n"), r.stderr
    r = labkit_cli("run", "-u", "0", "--", "grep", "CapEff", "/proc/self/status")
    assert int(r.stdout.split()[1], 16) == caps.mask_of(caps.DOCKER_DEFAULT)


def test_user_denied_what_root_may_do(no_leaks):
    """The same write, as root and as uid 1000: DAC decides, with no CAP_DAC_OVERRIDE left."""
    r = labkit_cli("run", "-u", "1000", "--", "sh", "-c", "echo x > /etc/labkit-test; echo $?")
    assert r.stdout == "1\n" and "Permission denied" in r.stderr
    r = labkit_cli("run", "--", "sh", "-c", "echo x > /etc/labkit-test; echo $?")
    assert r.stdout == "0\n", r.stderr


def test_read_only_root_refuses_writes_with_erofs_tmpfs_and_dev_stay_writable(tmp_path, no_leaks):
    os.chmod(tmp_path, 0o777)
    r = labkit_cli("run", "--read-only", "--tmpfs", "/scratch", "-v", f"{tmp_path}:/vol", "--", "sh", "-c",
                   "touch /etc/x; echo root=$?; touch /tmp/x; echo tmp=$?; touch /scratch/x; echo scratch=$?;"
                   "touch /dev/shm/x; echo shm=$?; touch /vol/x; echo vol=$?; grep -E ' / | /scratch ' /proc/mounts")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:5] == ["root=1", "tmp=1", "scratch=0", "shm=0", "vol=0"]
    assert r.stderr.count("Read-only file system") == 2              # EROFS, twice
    root = next(line for line in out[5:] if line.split()[1] == "/")
    scratch = next(line for line in out[5:] if line.split()[1] == "/scratch")
    assert root.split()[3].startswith("ro,") and scratch.split()[2] == "tmpfs" and "rw" in scratch.split()[3]
    assert os.path.exists(tmp_path / "x")                            # the volume kept its own flags


def test_tmpfs_is_in_the_containers_mount_table(no_leaks):
    r = labkit_cli("run", "--tmpfs", "/run/a", "--tmpfs", "/b", "--", "grep", "tmpfs", "/proc/mounts")
    mounts = {line.split()[1]: line.split()[3] for line in r.stdout.splitlines()}
    assert "/run/a" in mounts and "/b" in mounts and "nosuid" in mounts["/b"]


@pytest.mark.parametrize("option", ["--pids-limit", "--pids"])
def test_pids_limit_stops_a_fork_past_it(option, no_leaks):
    script = "for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; wait; echo done"
    r = labkit_cli("run", option, "5", "--", "sh", "-c", script)
    assert "can't fork" in r.stderr, (r.stdout, r.stderr)
    # -1: no limit, as docker (pids.max "max")
    assert cli.spec_for(cli.build_parser().parse_args(["run", "--pids-limit", "-1", "true"])).pids == "max"
    r = labkit_cli("run", option, "-1", "--", "sh", "-c", script)
    assert (r.returncode, r.stdout) == (0, "done\n") and "can't fork" not in r.stderr


def test_pids_limit_is_the_groups_pids_max(no_leaks):
    """The value --pids-limit gives is what the container's group holds (read from the host)."""
    args = cli.parse_args(["run", "--pids-limit", "7", "--", "sleep", "30"])
    with cli.container_for(args) as box:
        box.start(cli.command_of(args))
        group = next(p for p in box.prims if p.name == "cgroup")
        files = [os.path.join(d, "pids.max") for d in group.paths()
                 if os.path.exists(os.path.join(d, "pids.max"))]
        assert files and all(open(f).read() == "7\n" for f in files)


@pytest.mark.parametrize("option", ["--network", "--net"])
def test_network_bridge_gives_eth0(option, no_leaks):
    r = labkit_cli("run", option, "bridge", "--", "ls", "/sys/class/net")
    assert (r.returncode, sorted(r.stdout.split())) == (0, ["eth0", "lo"]), r.stderr
    r = labkit_cli("run", option, "none", "--", "ls", "/sys/class/net")
    assert r.stdout.split() == ["lo"]


def test_userns_host_is_the_default_and_bare_userns_keeps_its_meaning(no_leaks):
    host = labkit_cli("run", "--userns=host", "--", "cat", "/proc/self/uid_map")
    assert host.returncode == 0 and host.stdout.split() == ["0", "0", "4294967295"]
    own = labkit_cli("run", "--userns", "id", "-u")                  # bare --userns, then the command
    assert (own.returncode, own.stdout) == (0, "0\n"), own.stderr
    mapped = labkit_cli("run", "--userns", "--", "cat", "/proc/self/uid_map")
    assert mapped.stdout.split() == ["0", "100000", "65536"]


def test_hostname_is_dash_h_and_help_is_dash_dash_help(no_leaks):
    r = labkit_cli("run", "-h", "box", "--rm", "--", "hostname")
    assert (r.returncode, r.stdout) == (0, "box\n"), r.stderr
    for command in ("run", "trace"):
        r = labkit_cli(command, "--help")
        # Python 3.13's argparse writes the metavar once ("-h, --hostname NAME"), 3.11's twice.
        assert r.returncode == 0 and re.search(r"-h( NAME)?, --hostname NAME", r.stdout), r.stdout
        for code in ("125", "126", "127", "128+N"):
            assert code in r.stdout


def test_security_opt_no_new_privileges_is_accepted(no_leaks):
    for value in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"):
        r = labkit_cli("run", "--security-opt", value, "--", "grep", "NoNewPrivs", "/proc/self/status")
        assert (r.returncode, r.stdout.split()) == (0, ["NoNewPrivs:", "1"]), r.stderr
    one_line_125(labkit_cli("run", "--security-opt", "no-new-privileges:false", "--", "true"), "--security-opt")


@pytest.mark.skipif(not hasattr(seccomp.Seccomp, "from_profile"),
                    reason="seccomp.Seccomp.from_profile (Docker-format profiles) is not on this branch yet")
def test_security_opt_seccomp_profile_denies_what_the_profile_says(tmp_path, no_leaks):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                                   "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    r = labkit_cli("run", "--security-opt", f"seccomp={profile}", "--", "sh", "-c",
                   "mkdir /tmp/d; echo mkdir=$?; grep Seccomp: /proc/self/status")
    assert "mkdir=1" in r.stdout and "Operation not permitted" in r.stderr and "Seccomp:\t2" in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    one_line_125(labkit_cli("run", "--security-opt", f"seccomp={bad}", "--", "true"))


def test_exec_gets_the_containers_env_workdir_and_user(no_leaks):
    name = f"t-docker-exec-{os.getpid()}"
    run = subprocess.Popen([sys.executable, "-m", "labkit", "run", "--name", name, "-e", "GREETING=hi",
                            "-w", "/work", "-u", "1000:1000", "--", "sleep", "60"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if name in labkit_cli("ps").stdout:
                break
            time.sleep(0.1)
        r = labkit_cli("exec", name, "--", "sh", "-c", "echo $GREETING; pwd; id -u; id -g")
        assert (r.returncode, r.stdout.split()) == (0, ["hi", "/work", "1000", "1000"]), r.stderr
    finally:
        run.terminate()
        run.wait(timeout=30)


# --- refusals: one line, 125, nothing left behind -----------------------------

@pytest.mark.parametrize("args, words", [
    (["--platform", "linux/arm64", "alpine"], "--platform"),
    (["-p", "8080:80", "--", "httpd"], "-p is not an option"),
    (["--publish", "80", "--", "true"], "forwards no ports"),
    (["--privileged", "sh"], "--privileged"),
    (["--mount", "type=bind,src=/,dst=/x", "--", "true"], "-v/--volume"),
    (["--gpus", "all", "--", "true"], "--gpus"),
    (["--entrypoint", "sh", "--", "true"], "--entrypoint"),
    (["--label", "a=b", "--", "true"], "--label"),
    (["--ulimit", "nofile=10", "--", "true"], "--ulimit"),
    (["--device", "/dev/sda", "--", "true"], "--device"),
    (["--pull", "always", "--", "true"], "pulls nothing"),
    (["--ho", "x", "--", "true"], "unrecognized arguments: --ho"),       # no abbreviations
    (["--read", "--", "true"], "unrecognized arguments: --read"),
    (["--userns=remap", "--", "true"], "--userns"),
    (["--network", "host", "--", "true"], "no host mode"),
    (["-u", "nobody", "--", "true"], "--user 'nobody'"),
    (["-w", "relative", "--", "true"], "absolute path"),
    (["--tmpfs", "/x:size=1m", "--", "true"], "path only"),
    (["--tmpfs", "/x", "--ns", "pid", "--", "true"], "need a mount namespace"),
    (["--security-opt", "apparmor=x", "--", "true"], "unknown --security-opt"),
    (["-e", "A B=1", "--", "true"], "bad variable name"),
])
def test_each_refusal_is_one_line_and_exit_125(args, words, no_leaks):
    one_line_125(labkit_cli("run", *args), words)


@pytest.mark.parametrize("image", ["busybox:latest", "docker.io/library/alpine", "ghcr.io/x/y:1.0",
                                   "alpine@sha256:" + "0" * 64])
def test_an_image_reference_is_refused_with_the_rootfs_hint(image, no_leaks):
    one_line_125(labkit_cli("run", image, "bash"), "looks like an image name", "--rootfs DIR",
                 "labkit rootfs build", "docker export")


@pytest.mark.parametrize("word", ["ubuntu", "alpine"])
def test_a_bare_image_name_is_not_found_with_the_hint(word, no_leaks):
    """A bare word may be a command: not found (127, as docker), with the hint."""
    r = labkit_cli("run", word, "bash")
    assert r.returncode == 127 and r.stderr.count("\n") == 1, r.stderr
    assert f"{word}: command not found in the container" in r.stderr and "--rootfs DIR" in r.stderr


def test_commands_in_the_rootfs_run_and_a_path_not_found_stays_127(tmp_path, no_leaks):
    assert labkit_cli("run", "sh", "-c", "echo hi").stdout == "hi\n"
    assert labkit_cli("run", "--", "busybox", "echo", "hi").stdout == "hi\n"
    r = labkit_cli("run", "--", "/no/such/program")
    assert r.returncode == 127 and "--rootfs" not in r.stderr
    (tmp_path / "empty").mkdir()                 # with --rootfs, a missing sh is only not found
    r = labkit_cli("run", "--rootfs", str(tmp_path / "empty"), "--", "sh")
    assert r.returncode == 127 and "image" not in r.stderr


def test_every_docker_only_option_is_refused_with_its_reason():
    for options, why in cli.DOCKER_ONLY.items():
        for option in options:
            with pytest.raises(UsageError) as refused:
                cli.parse_args(["run", option, "x", "--", "true"])
            assert str(refused.value) == f"{option} is not an option of labkit run: {why}"


def test_version_and_bare_labkit():
    r = labkit_cli("--version")
    assert (r.returncode, r.stdout) == (0, f"labkit {labkit.__version__}\n")
    r = labkit_cli()
    assert r.returncode == 0 and r.stdout.startswith("usage: labkit") and "run" in r.stdout
    one_line_125(labkit_cli("--vers"))                               # not taken for --version
    one_line_125(labkit_cli("--vers", "ps"), "unrecognized arguments: --vers")


def test_trace_writes_to_the_file_o_names(tmp_path, no_leaks):
    out = tmp_path / "trace.txt"
    r = labkit_cli("trace", "--ns", "pid", "-o", str(out), "--", "cat", "/no/such/labkit/file")
    assert r.returncode == 1
    assert "openat" not in r.stderr and "No such file" in r.stderr    # the command's own stderr only
    assert any("openat" in line and "-1 ENOENT" in line for line in out.read_text().splitlines())
    js = tmp_path / "trace.json"
    r = labkit_cli("trace", "--ns", "pid", "--json", "--output", str(js), "--", "true")
    rows = [json.loads(line) for line in js.read_text().splitlines()]
    assert r.returncode == 0 and r.stderr == "" and rows[-1]["lost"] == 0
    one_line_125(labkit_cli("trace", "-o", str(tmp_path / "no" / "dir"), "--", "true"), "cannot write -o")


@pytest.mark.parametrize("option", ["--name", "-t", "-i", "--restart", "--rm", "-d", "--detach", "--platform"])
def test_trace_refuses_what_it_does_not_use(option, no_leaks):
    one_line_125(labkit_cli("trace", option, "x", "--", "true"), f"{option} is not an option of labkit trace")


# --- the spec ------------------------------------------------------------------

def test_building_a_container_opens_no_file(tmp_path):
    """No mount table read, no rootfs built: Container() only checks its spec
    (sys.addaudithook sees every open() this interpreter makes)."""
    opened: list[str] = []
    watching = [True]
    sys.addaudithook(lambda event, args: watching[0] and event == "open" and opened.append(str(args[0])))
    try:
        Container(hostname="box", memory="64M", pids=32, network="bridge", volumes=[f"{tmp_path}:/x:ro"],
                  tmpfs=["/t"], read_only=True, env={"A": "1"}, workdir="/w", user="1000:1000",
                  cap_add=["NET_ADMIN"], rootfs_dir="/var/lib/labkit/no-such-rootfs")
    finally:
        watching[0] = False
    assert opened == []


def test_spec_round_trips_through_json():
    c = Container(ContainerSpec(name="rt", hostname="h", namespaces="pid,uts,mount,net,user", volumes=["/tmp:/x:ro"],
                                tmpfs=["/t"], read_only=True, network="bridge", ip="10.88.7.7/16",
                                memory="64M", pids="max", cap_drop=["MKNOD"], seccomp_profile="unconfined",
                                env={"A": "1"}, workdir="/w", user="1000:2", uid_map=["0:100000:65536"]))
    again = Container(ContainerSpec(**json.loads(json.dumps(c.spec()))))
    assert again.config == c.config and again.spec() == c.spec()
    assert again.env["A"] == "1" and again.user == (1000, 2) and again.config.userns
    assert ContainerSpec(userns=True, uid_map=[IdMap(0, 100000, 10)]).uid_map == ["0:100000:10"]
    with pytest.raises(UsageError, match="one ContainerSpec"):
        Container("/some/rootfs")
