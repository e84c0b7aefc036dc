"""Unit tests: parsing, error messages, exit statuses, doctor's report format."""

from __future__ import annotations

import argparse
import errno
import json

import pytest

from labkit import cli, container, doctor, spawn, uts
from labkit.errors import (CommandNotExecutableError, CommandNotFoundError, KernelError,
                           LabkitError, NotRootError, UsageError)


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_run_options_and_command_are_separated():
    args = parse("run", "--hostname", "box", "--", "sh", "-c", "echo hi")
    assert args.hostname == "box"
    assert cli.command_of(args) == ["sh", "-c", "echo hi"]


def test_command_options_are_not_taken_as_labkit_options():
    args = parse("run", "ls", "--hostname", "x")
    assert args.hostname is None
    assert cli.command_of(args) == ["ls", "--hostname", "x"]


def test_default_namespaces_are_those_of_design():
    names = container.parse_namespaces(None)
    assert names == ("pid", "uts", "ipc", "mount", "net", "cgroup") == container.DEFAULT_NAMESPACES


def test_ns_list_keeps_order_and_drops_duplicates():
    assert container.parse_namespaces("uts,pid,uts") == ("uts", "pid")
    assert container.parse_namespaces(["uts", " pid", "uts"]) == ("uts", "pid")


def test_unknown_namespace_is_a_usage_error_naming_it():
    with pytest.raises(UsageError, match="unknown namespace 'time'"):
        container.parse_namespaces("pid,time")
    with pytest.raises(UsageError, match="unknown namespace 'time'"):
        container.ContainerSpec(namespaces=["pid", "time"])


def test_hostname_without_uts_namespace_is_refused():
    with pytest.raises(UsageError, match="needs a UTS namespace"):
        cli.primitives_for(parse("run", "--ns", "pid", "--hostname", "x", "true"))


def test_empty_command_is_a_usage_error():
    with pytest.raises(UsageError, match="no command given"):
        cli.command_of(parse("run", "--"))


def test_parser_mistakes_are_usage_errors_not_exit_2():
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        parse("run", "--bogus", "x")
    with pytest.raises(UsageError):
        parse("frobnicate")


@pytest.mark.parametrize("name,ok", [("a", True), ("x" * 64, True), ("x" * 65, False),
                                     ("", False), ("é" * 32, True), ("é" * 33, False)])
def test_hostname_limit_is_64_bytes_not_characters(name, ok):
    if ok:
        assert uts.check_name(name) == name
    else:
        with pytest.raises(UsageError):
            uts.check_name(name)


@pytest.mark.parametrize("returncode,status", [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_exit_status_maps_signals_to_128_plus_n(returncode, status):
    assert spawn.exit_status(returncode) == status


def test_error_exit_codes_follow_docker_run():
    assert LabkitError("x").exit_code == 125
    assert UsageError("x").exit_code == 125
    assert NotRootError().exit_code == 125
    assert CommandNotExecutableError("x").exit_code == 126
    assert CommandNotFoundError("x").exit_code == 127


def test_not_root_message_says_what_to_do():
    assert str(NotRootError()) == "labkit needs root: run it inside the lab VM, or with sudo"


def test_kernel_error_names_step_and_errno_in_words():
    e = KernelError("uts: enter", errno.EPERM, "sethostname: Operation not permitted")
    assert str(e).startswith("uts: enter failed with EPERM: sethostname: Operation not permitted")
    assert e.errno == errno.EPERM and e.step == "uts: enter"
    assert "\n" not in str(e)


def test_child_error_message_is_decoded_into_the_right_error():
    line = b"Epid: enter\x00%d\x00mount: /proc: Permission denied" % errno.EACCES
    with pytest.raises(KernelError, match="pid: enter failed with EACCES"):
        spawn._expect(line, b"P", "sh")
    with pytest.raises(CommandNotFoundError, match="nosuch: command not found"):
        spawn._expect(b"Eexecve\x00%d\x00No such file or directory" % errno.ENOENT, None, "nosuch")
    with pytest.raises(CommandNotExecutableError):
        spawn._expect(b"Eexecve\x00%d\x00Permission denied" % errno.EACCES, None, "/etc")


def test_child_dying_silently_is_reported():
    with pytest.raises(LabkitError, match="died during setup"):
        spawn._expect(b"", b"U", "sh")


def test_doctor_report_and_json_shape():
    results = doctor.checks()
    names = [c.name for c in results]
    assert "root" in names and "namespace pid" in names and "cgroup memory" in names
    text = doctor.report(results)
    assert text.splitlines()[-1] in ("ready", "NOT ready: fix the FAIL lines above")
    for c in results:
        if not c.ok:
            assert c.hint, f"failed check {c.name} has no hint"
    json.dumps(doctor.as_dicts(results))


def test_cgroup_controllers_are_read_from_the_mount_table():
    controllers = doctor.cgroup_controllers()
    with open("/proc/mounts") as f:
        table = f.read()
    for name, version in controllers.items():
        assert version in ("v1", "v2")
        if version == "v1":
            assert any(line.split()[2] == "cgroup" and name in line.split()[3].split(",")
                       for line in table.splitlines())


def test_a_syscall_number_unknown_for_this_machine_is_enosys_not_a_crash():
    from labkit import kernel

    with pytest.raises(OSError) as info:
        kernel.syscall("labkit_test_call")                  # in no table, for no machine
    assert info.value.errno == errno.ENOSYS and "labkit_test_call" in str(info.value)
