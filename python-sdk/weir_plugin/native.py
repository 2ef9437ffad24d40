"""The worker runtime's optional C speedups (`_native.c`): building and loading them.

The plugin host runs `python -m weir_plugin.native build DIR` with the venv's interpreter
when it prepares the venv. That compiles `_native.c` next to this file with the compiler
and flags the interpreter was built with (`sysconfig`), and skips the work when a module
built from the same source for the same interpreter is already there. Built modules are
also kept in the user's cache directory (`$XDG_CACHE_HOME/weir/worker-speedups`, else
`~/.cache/...`; best effort), so a new venv for the same interpreter copies one instead
of compiling again. Without a compiler
the build fails with the compiler's message, the host logs a warning, and workers run
without the speedups: plugins see no difference except speed.

Extra compiler flags (checks, not production builds): `build(extra_cflags=[...])` and the
`WEIR_NATIVE_CFLAGS` environment variable (split like a shell would), which also reaches
`python -m weir_plugin.native build`. They are part of the build's stamp, so a module built
with other flags is never taken for current, nor copied from the cache.

Free-threaded interpreters (`Py_GIL_DISABLED`) get no speedups: the module is not built
and not loaded, and workers build rows in Python (see `_free_threaded`).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from typing import Any, Protocol

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_HERE, "_native.c")

# Freed allocator arenas a worker keeps for the next batch (see `_native.c`): at most this,
# and at most an eighth of the worker's address-space limit.
ARENA_BUDGET = 512 << 20

# Extra compiler flags for every build, e.g. "-fsanitize=address" (scripts/asan-native).
CFLAGS_ENV = "WEIR_NATIVE_CFLAGS"
# What the tests build with: the source must stay free of warnings.
STRICT_CFLAGS = ("-Wall", "-Wextra", "-Werror")


class Speedups(Protocol):
    """What the compiled module provides (`_native.pyi`)."""

    def wal_rows(self, segments: list[Any], /) -> list[dict[str, Any]]: ...

    def keep_arenas(self, nbytes: int, /) -> None: ...

    def arena_stats(self) -> dict[str, int]: ...


def _free_threaded() -> bool:
    """A free-threaded interpreter (3.13t and later). `_native.c` declares no `Py_mod_gil`
    slot, so importing it there would turn the GIL back on for the whole worker (or, with
    `PYTHON_GIL=0`, run C code never reviewed for running without it): a worker is better
    off building rows in Python."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def load() -> Speedups | None:
    """The compiled module, or None when it was not built (or fails to load, or this is a
    free-threaded interpreter)."""
    if _free_threaded():
        return None
    try:
        from . import _native
    except ImportError:
        return None
    return _native


def arena_budget() -> int:
    """How many bytes of freed arenas to keep in this process."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return ARENA_BUDGET
    if soft in (resource.RLIM_INFINITY, -1) or soft <= 0:
        return ARENA_BUDGET
    return min(ARENA_BUDGET, soft // 8)


def _stamp(extra_cflags: Sequence[str] = ()) -> str:
    """What a built module depends on: this source, the base interpreter (any venv of the
    same interpreter loads the same module), and any extra compiler flags."""
    import platform

    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read())
    for part in (sys.version, sys.base_prefix, sysconfig.get_config_var("EXT_SUFFIX") or "", platform.machine()):
        digest.update(part.encode() + b"\0")
    if extra_cflags:
        # Only then: the stamps (and cached modules) of plain builds stay what they were.
        digest.update(b"cflags\0" + "\0".join(extra_cflags).encode() + b"\0")
    return digest.hexdigest()


def _cache_dir(stamp: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "weir", "worker-speedups", stamp[:32])


_TMP_PREFIX = "_native-partial-"


def _install(src: str, dest_dir: str, target: str) -> None:
    """Copy `src` to `target` atomically (a worker may be importing the old one)."""
    import shutil

    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=dest_dir)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


_LOADS = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('weir_plugin._native', sys.argv[1])\n"
    "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
)


def _loads(path: str) -> str | None:
    """None if the module at `path` imports in a fresh interpreter, else why not."""
    out = subprocess.run(
        [sys.executable, "-c", _LOADS, path], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    return None if out.returncode == 0 else (out.stdout + out.stderr).strip()


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def build(dest: str = _HERE, extra_cflags: Sequence[str] = ()) -> tuple[bool, str]:
    """Compile `_native.c` into `dest`; (built or already current, what happened). On
    failure no module is left in `dest`, so no worker loads a stale one. `extra_cflags` (after
    those of `WEIR_NATIVE_CFLAGS`) go to the compiler after the interpreter's own flags."""
    if sys.byteorder != "little":
        # The host writes column buffers little-endian and the C code reads them as they are.
        return False, "the speedups support little-endian machines only"
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = os.path.join(dest, "_native" + suffix)
    stamp_path = os.path.join(dest, "_native.stamp")
    if _free_threaded():
        _remove(target, stamp_path)
        return False, "the speedups are not built for a free-threaded Python: workers build rows in Python"
    extra = shlex.split(os.environ.get(CFLAGS_ENV, "")) + list(extra_cflags)
    stamp = _stamp(extra)
    try:
        with open(stamp_path) as f:
            if f.read() == stamp and os.path.exists(target):
                return True, f"{target} is current"
    except OSError:
        pass
    # Leftovers of a build that was killed part-way.
    for name in os.listdir(dest):
        if name.startswith(_TMP_PREFIX):
            _remove(os.path.join(dest, name))
    cached = os.path.join(_cache_dir(stamp), "_native" + suffix)
    if os.path.exists(cached):
        try:
            _install(cached, dest, target)
            with open(stamp_path, "w") as f:
                f.write(stamp)
            return True, f"copied {cached} to {target}"
        except OSError:
            pass  # compile instead
    _remove(target, stamp_path)
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    cflags = shlex.split(sysconfig.get_config_var("CFLAGS") or "")
    # LDSHARED is the compiler followed by its flags for a shared module (-shared, or on
    # macOS -bundle -undefined dynamic_lookup): keep every word after the compiler.
    ldflags = shlex.split(sysconfig.get_config_var("LDSHARED") or "")[1:] or ["-shared"]
    include = sysconfig.get_paths()["include"]
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=suffix, dir=dest)
    os.close(fd)
    cmd = cc + cflags + ["-O2", "-fPIC", "-I", include, *extra] + ldflags + [SOURCE, "-o", tmp]
    try:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            return False, f"{' '.join(cmd)} exited with {out.returncode}: {(out.stdout + out.stderr).strip()}"
        why = _loads(tmp)
        if why is not None:
            return False, f"{' '.join(cmd)} built a module that does not import: {why}"
        os.replace(tmp, target)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{' '.join(cmd)}: {e}"
    finally:
        _remove(tmp)  # already gone once replaced; removed on every failure
    with open(stamp_path, "w") as f:
        f.write(stamp)
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        _install(target, os.path.dirname(cached), cached)
    except OSError:
        pass  # no writable cache directory: the next new venv compiles again
    return True, f"built {target}"


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "build":
        ok, message = build(argv[1] if len(argv) > 1 else _HERE)
        if ok:
            # Prove it loads (the host only sends columns to workers that can build rows fast).
            try:
                import importlib

                importlib.import_module("weir_plugin._native")
            except ImportError as e:
                ok, message = False, f"{message}, but it does not import: {e}"
        print(message)
        return 0 if ok else 1
    print("usage: python -m weir_plugin.native build [DIR]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
