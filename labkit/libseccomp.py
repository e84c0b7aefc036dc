"""libseccomp's Python binding, chosen here and nowhere else.

libseccomp (the C library that compiles seccomp filters and knows each
architecture's syscall table) ships its own Python module, ``seccomp``, a Cython
extension built with the library (Debian: python3-seccomp). It is not on PyPI,
so a ``pip install`` cannot get it. pyseccomp (PyPI) is a ctypes binding of the
same C API under the same Python names (SyscallFilter, Arg, ERRNO, Arch,
resolve_syscall ...), loading the system's libseccomp.so.2. labkit takes
libseccomp's own module where Python can import it (a distribution's Python, a
venv made with --system-site-packages) and pyseccomp otherwise.

Import this module lazily (inside a function): it loads libseccomp.so.2.
"""

from __future__ import annotations

try:
    import seccomp as binding          # libseccomp's own module (python3-seccomp)
except ImportError:
    try:
        import pyseccomp as binding    # the same C API through ctypes (pip install pyseccomp)
    except RuntimeError as e:          # pyseccomp is there, libseccomp.so.2 is not
        raise ImportError(str(e)) from None

# SCMP_ARCH_* by the machine name uname(2) gives (os.uname().machine).
ARCHES: dict[str, int] = {"x86_64": binding.Arch.X86_64, "aarch64": binding.Arch.AARCH64}

__all__ = ["binding", "ARCHES"]
