"""Docker's seccomp profile format (JSON), read into seccomp.py's rules.

The format is documented by Docker (https://docs.docker.com/engine/security/seccomp/),
its fields by moby's profile types (https://pkg.go.dev/github.com/moby/profiles/seccomp:
Seccomp, Syscall, Filter) and by the OCI runtime spec's ``linux.seccomp``
(https://github.com/opencontainers/runtime-spec/blob/main/config-linux.md#seccomp):

- ``defaultAction``: what a call that no rule names gets, an SCMP_ACT_* name
  (seccomp_rule_add(3)); ``defaultErrnoRet``: its errno (EPERM if absent).
- ``architectures``: SCMP_ARCH_* names the filter accepts besides the native
  one; or ``archMap``, a list of ``{architecture, subArchitectures}`` of which
  the native architecture's entry applies. A profile gives one or the other.
- ``syscalls``: the rules. Each has ``names`` (or the older ``name``),
  ``action``, ``errnoRet`` (EPERM if absent; only for SCMP_ACT_ERRNO and
  SCMP_ACT_TRACE), ``args`` (each ``{index, value, valueTwo, op}``, op an
  SCMP_CMP_* name; SCMP_CMP_MASKED_EQ means ``arg & value == valueTwo``; all
  must hold), ``includes`` and ``excludes`` (``{caps, arches, minKernel}``)
  and ``comment``. A rule applies only if the container keeps all of
  ``includes.caps``, the machine is one of ``includes.arches`` (named as Go
  names them: amd64, arm64) and the kernel is at least ``includes.minKernel``
  ("5.8": major.minor); and not if it keeps any of ``excludes.caps``, is one of
  ``excludes.arches`` or runs at least ``excludes.minKernel``.

How labkit hands them to libseccomp, and why:

- libseccomp ANDs the comparisons of one rule and refuses two on the same
  argument (seccomp_rule_add(3) returns EINVAL: measured with 2.5.4); a rule
  whose ``args`` compare one argument twice becomes one rule per comparison,
  so that either may match (runc reads such profiles the same way).
- A rule whose action is the default one changes nothing, and libseccomp
  refuses it (EACCES): it is left out.
- A name libseccomp does not know (a call newer than the library, see
  syscalls.py) cannot be put in the filter: it is left out and listed in
  ``skipped``, as runc skips it; the call then gets the default action.

What labkit does not support is refused with a UsageError naming the field:
SCMP_ACT_NOTIFY and ``listenerPath``/``listenerMetadata`` (they need a
supervisor process holding the listener), and ``flags`` (seccomp(2)'s
SECCOMP_FILTER_FLAG_*: labkit installs with prctl(PR_SET_SECCOMP), which takes
none). So is a field the format does not have.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, NamedTuple

from .errors import UsageError
from .seccomp import ACTIONS, OPERATORS, WITH_ERRNO, Condition, Rule

TOP_FIELDS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls",
              "listenerPath", "listenerMetadata", "flags"}
RULE_FIELDS = {"name", "names", "action", "errnoRet", "args", "includes", "excludes", "comment"}
ARG_FIELDS = {"index", "value", "valueTwo", "op"}
FILTER_FIELDS = {"caps", "arches", "minKernel"}
EPERM = 1


class Profile(NamedTuple):
    """A profile as the filter needs it."""

    default: tuple[str, int | None]
    arches: tuple[str, ...]
    rules: list[Rule]
    skipped: tuple[str, ...]


def _bad(path: str, field: str, why: str) -> UsageError:
    return UsageError(f"seccomp profile {path}: {field}: {why}",
                      "fix the profile (Docker's format: docs.docker.com/engine/security/seccomp/)")


def _objects(path: str, where: str, items: Any, fields: set[str], what: str) -> Iterator[tuple[str, dict]]:
    """Each item of the list ``items`` (at ``where``) with its place, checked to be
    an object whose fields are all in ``fields``."""
    if not isinstance(items, list):
        raise _bad(path, where, "not a list")
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise _bad(path, at, "not an object")
        for field in item:
            if field not in fields:
                raise _bad(path, f"{at}.{field}", f"not a field of {what}")
        yield at, item


def load(path: str, caps: set[str], goarch: str) -> Profile:
    """Read the profile at ``path`` for a container keeping ``caps`` on the
    machine Go calls ``goarch``; UsageError naming the field at the first fault."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise UsageError(f"seccomp profile {path}: {e.strerror}",
                         "give the path of a JSON profile (--security-opt seccomp=PATH)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"seccomp profile {path}: not JSON: {e}",
                         "fix the file (Docker's format: docs.docker.com/engine/security/seccomp/)") from None
    if not isinstance(doc, dict):
        raise _bad(path, "(top level)", "not a JSON object")
    for field in doc:
        if field not in TOP_FIELDS:
            raise _bad(path, field, "not a field of the profile format")
    for field in ("listenerPath", "listenerMetadata", "flags"):
        if doc.get(field):
            raise _bad(path, field, "not supported by labkit (it installs the filter with prctl(2), "
                                    "with no flags and no notification listener)")
    if "defaultAction" not in doc:
        raise _bad(path, "defaultAction", "missing")
    default = _action(path, "defaultAction", doc["defaultAction"], "defaultErrnoRet", doc.get("defaultErrnoRet"))
    arches = _arches(path, doc)
    found: list[Rule] = []
    skipped: list[str] = []
    for where, entry in _objects(path, "syscalls", doc.get("syscalls") or [], RULE_FIELDS, "a syscall rule"):
        names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
        if not names or not all(isinstance(n, str) and n for n in names):
            raise _bad(path, f"{where}.names", "a rule needs a list of syscall names")
        if "action" not in entry:
            raise _bad(path, f"{where}.action", "missing")
        action = _action(path, f"{where}.action", entry["action"], f"{where}.errnoRet", entry.get("errnoRet"))
        conditions = _conditions(path, where, entry.get("args") or [])
        if not _applies(path, where, entry, caps, goarch) or action == default:
            continue
        for name in names:
            if _unknown(name):
                skipped.append(name)
                continue
            for args in conditions:
                found.append(Rule(name, action[1], args, action[0]))
    return Profile(default, arches, found, tuple(dict.fromkeys(skipped)))


def _action(path: str, field: str, name: Any, errno_field: str, number: Any) -> tuple[str, int | None]:
    """(action, errno) of an action name and its errnoRet."""
    if name == "SCMP_ACT_NOTIFY":
        raise _bad(path, field, "SCMP_ACT_NOTIFY is not supported by labkit (it needs a supervisor process)")
    if name not in ACTIONS:
        raise _bad(path, field, f"unknown action {name!r} (one of {', '.join(ACTIONS)})")
    if name not in WITH_ERRNO:
        if number is not None:
            raise _bad(path, errno_field, f"{name} returns no errno")
        return ("SCMP_ACT_KILL" if name == "SCMP_ACT_KILL_THREAD" else name), None     # one action, two names
    if number is None:
        return name, EPERM                       # the OCI runtime spec's default
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 4095:
        raise _bad(path, errno_field, f"{number!r} is not an errno (0-4095)")
    return name, number


def _arches(path: str, doc: dict[str, Any]) -> tuple[str, ...]:
    """The SCMP_ARCH_* names the filter accepts, from architectures or archMap."""
    from .libseccomp import binding

    if doc.get("architectures") and doc.get("archMap"):
        raise _bad(path, "archMap", "give either architectures or archMap, not both")
    # seccomp_arch_native(3), by its name (libseccomp's own module keeps the tokens signed)
    native = next(f"SCMP_ARCH_{name}" for name in dir(binding.Arch) if name.isupper() and name != "NATIVE"
                  and getattr(binding.Arch, name) & 0xFFFFFFFF == binding.system_arch() & 0xFFFFFFFF)
    if doc.get("archMap"):
        entries = doc["archMap"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise _bad(path, "archMap", "not a list of {architecture, subArchitectures}")
        names: list[Any] = []
        for e in entries:
            if e.get("architecture") == native:
                names = [native, *(e.get("subArchitectures") or [])]
        field = "archMap"
    else:
        names = doc.get("architectures") or []
        field = "architectures"
    if not isinstance(names, list):
        raise _bad(path, field, "not a list")
    for name in names:
        if not isinstance(name, str) or not hasattr(binding.Arch, name.removeprefix("SCMP_ARCH_")) \
                or not name.startswith("SCMP_ARCH_"):
            raise _bad(path, field, f"unknown architecture {name!r}")
    return tuple(names)


def _conditions(path: str, where: str, args: Any) -> list[tuple[Condition, ...]]:
    """The comparisons of one rule: one tuple if each argument is compared once,
    else one tuple per comparison (see the module docstring)."""
    found: list[Condition] = []
    for at, arg in _objects(path, f"{where}.args", args, ARG_FIELDS, "an argument comparison"):
        index, op = arg.get("index"), arg.get("op")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 5:
            raise _bad(path, f"{at}.index", f"{index!r} is not an argument index (0-5)")
        if op not in OPERATORS:
            raise _bad(path, f"{at}.op", f"unknown operator {op!r} (one of {', '.join(OPERATORS)})")
        values = []
        for field in ("value", "valueTwo"):
            v = arg.get(field, 0)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 64:
                raise _bad(path, f"{at}.{field}", f"{v!r} is not a 64-bit unsigned number")
            values.append(v)
        found.append(Condition(index, op, *values))
    if len({c.index for c in found}) < len(found):
        return [(c,) for c in found]
    return [tuple(found)]


def _applies(path: str, where: str, entry: dict[str, Any], caps: set[str], goarch: str) -> bool:
    """Whether the rule's includes and excludes let it apply here."""
    for kind in ("includes", "excludes"):
        cond = entry.get(kind) or {}
        if not isinstance(cond, dict):
            raise _bad(path, f"{where}.{kind}", "not an object")
        for field in cond:
            if field not in FILTER_FIELDS:
                raise _bad(path, f"{where}.{kind}.{field}", "not one of caps, arches, minKernel")
        for field in ("caps", "arches"):
            if not isinstance(cond.get(field, []), list):
                raise _bad(path, f"{where}.{kind}.{field}", "not a list")
    inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
    if not set(inc.get("caps", [])) <= caps or set(exc.get("caps", [])) & caps:
        return False
    if (inc.get("arches") and goarch not in inc["arches"]) or goarch in exc.get("arches", []):
        return False
    if inc.get("minKernel") and not _kernel_at_least(path, f"{where}.includes.minKernel", inc["minKernel"]):
        return False
    if exc.get("minKernel") and _kernel_at_least(path, f"{where}.excludes.minKernel", exc["minKernel"]):
        return False
    return True


def _kernel_at_least(path: str, field: str, version: Any) -> bool:
    """Is the running kernel (uname -r) at least ``version``, "major.minor"?"""
    try:
        wanted = tuple(int(n) for n in str(version).split("."))
        if len(wanted) != 2:
            raise ValueError
    except ValueError:
        raise _bad(path, field, f"{version!r} is not major.minor (e.g. 5.8)") from None
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= wanted


def _unknown(name: str) -> bool:
    """Does libseccomp know no syscall ``name`` on any architecture?"""
    from .libseccomp import binding

    return binding.resolve_syscall(binding.Arch.NATIVE, name) == -1    # __NR_SCMP_ERROR
