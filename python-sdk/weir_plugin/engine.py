"""Loading and running plugins: the part of the worker that InfluxDB 3 plugins see.

Backend-agnostic: the worker process plugs in a backend that talks to the plugin host; the
offline test harness (`weir_plugin.testing`) plugs in one that records everything.
"""

from __future__ import annotations

import builtins
import importlib
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from types import CodeType, ModuleType
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .cache import CacheScope, PluginCache, ScopeCache
from .line_builder import LineBuilder

if TYPE_CHECKING:
    from .api import Buildable, Cache, PluginAPI

# The exact messages InfluxDB 3 gives for a plugin without the entry point.
MISSING_FUNCTION = {
    "process_writes": "the process_writes function is not present in the plugin. "
    "Should be defined as: process_writes(influxdb3_local, table_batches, args=None)",
    "process_scheduled_call": "the process_scheduled_call function is not present in the plugin. "
    "Should be defined as: process_scheduled_call(influxdb3_local, call_time, args=None)",
    "process_request": "the process_request function is not present in the plugin. "
    "Should be defined as: process_request(influxdb3_local, query_parameters, request_headers, "
    "request_body, args=None) -> Tuple[str, Optional[Dict[str, str]]]",
}


def install_builtins() -> None:
    """Make `LineBuilder` a builtin, as InfluxDB 3 does, before any plugin code runs."""
    builtins.LineBuilder = LineBuilder  # type: ignore[attr-defined]


class Backend(Protocol):
    """What the plugin API needs from the outside world."""

    def log(self, level: str, text: str) -> None: ...

    def query(self, database: str, sql: str, params: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Rows of the answer; raises `BackendError` with the server's message."""

    def write(self, database: str, lines: list[str], no_sync: bool) -> None:
        """Write now; raises `BackendError` with the server's message."""

    def global_cache(self) -> CacheScope:
        """The global cache scope."""


class BackendError(Exception):
    """An error the server reported for a query or write."""


class PluginLoadError(Exception):
    """The plugin cannot be loaded or lacks the entry point; the message is the one to log."""


class LocalAPI:
    """`influxdb3_local`: exactly info, warn, error, query, write, write_to_db, write_sync,
    write_sync_to_db and cache."""

    __slots__ = ("_backend", "_database", "_writes", "cache")

    def __init__(self, backend: Backend, database: str, cache: PluginCache) -> None:
        self._backend = backend
        self._database = database
        # Buffered writes per database, committed only if the call succeeds.
        self._writes: dict[str, list[str]] = {}
        self.cache: Cache = cache

    def _log(self, level: str, args: tuple[object, ...]) -> None:
        self._backend.log(level, " ".join(str(a) for a in args))

    def info(self, *args: object) -> None:
        self._log("INFO", args)

    def warn(self, *args: object) -> None:
        self._log("WARN", args)

    def error(self, *args: object) -> None:
        self._log("ERROR", args)

    def query(
        self, query: str, args: dict[str, Any] | None = None, database: str | None = None
    ) -> list[dict[str, Any]]:
        db = database or self._database
        try:
            return self._backend.query(db, query, args)
        except BackendError as e:
            raise Exception(f"error: {e} executing query on {db}: {query}") from None

    def write(self, line_builder: Buildable) -> None:
        self.write_to_db(self._database, line_builder)

    def write_to_db(self, db: str, line_builder: Buildable) -> None:
        self._writes.setdefault(db, []).append(line_builder.build())

    def write_sync(self, line_builder: Buildable, no_sync: bool) -> None:
        self.write_sync_to_db(self._database, line_builder, no_sync)

    def write_sync_to_db(self, db: str, line_builder: Buildable, no_sync: bool) -> None:
        line = line_builder.build()
        try:
            self._backend.write(db, [line], bool(no_sync))
        except BackendError as e:
            raise Exception(f"error writing line protocol to {db}: {e}") from None


def _plugin_root() -> str | None:
    """The real plugin directory when running under the plugin host (`PLUGIN_DIR`)."""
    root = os.environ.get("PLUGIN_DIR")
    return os.path.realpath(root) if root else None


def _inside(real: str, root: str | None) -> bool:
    return root is None or real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _read_inside(path: str) -> bytes:
    """The bytes of `path`, refusing a symlink and anything whose opened file is not inside
    the plugin directory (checked on the open descriptor, so a swap after the check cannot
    redirect the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        if os.path.islink(path):
            raise PluginLoadError(f"Path traversal detected: {path}") from None
        raise PluginLoadError(f"cannot read plugin {path}: {e}") from None
    with os.fdopen(fd, "rb") as f:
        proc = f"/proc/self/fd/{f.fileno()}"
        real = os.readlink(proc) if os.path.exists(proc) else os.path.realpath(path)
        if not _inside(real, _plugin_root()):
            raise PluginLoadError(f"Path traversal detected: {path}")
        return f.read()


def _tree_stamp(path: str) -> tuple[tuple[str, str, int, int, int], ...]:
    """A value that changes when any .py file under `path` changes; refuses a package with a
    file or directory that leads outside the plugin directory."""
    root_dir = _plugin_root()
    stamp: list[tuple[str, str, int, int, int]] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in dirs + files:
            full = os.path.join(root, name)
            if os.path.islink(full) and not _inside(os.path.realpath(full), root_dir):
                raise PluginLoadError(f"Path traversal detected: {full}")
        for f in sorted(files):
            if f.endswith(".py"):
                st = os.lstat(os.path.join(root, f))
                stamp.append((root, f, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamp)


class PluginCode:
    """A plugin on disk: a single `.py` file (run in a fresh namespace on every call, reloaded
    when edited) or a directory with `__init__.py` (imported once as a package, reloaded when
    any of its files changes)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.is_package = os.path.isdir(self.path)
        self._lock = threading.Lock()
        self._stamp: object = None
        self._code: CodeType | None = None
        self._module: ModuleType | None = None

    def _load_file(self) -> dict[str, Any]:
        # lstat: a file swapped for a symlink changes the stamp and is read (and refused) again.
        st = os.lstat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._code is None or stamp != self._stamp:
            source = _read_inside(self.path)
            self._code = compile(source, self.path, "exec")
            self._stamp = stamp
        # A fresh namespace per call. No `__name__`: it resolves to 'builtins', as in
        # InfluxDB 3 (a synthetic name breaks @dataclass under postponed annotations).
        namespace: dict[str, Any] = {"__builtins__": builtins, "__file__": self.path}
        exec(self._code, namespace)
        return namespace

    def _load_package(self) -> dict[str, Any]:
        if not os.path.isfile(os.path.join(self.path, "__init__.py")):
            raise PluginLoadError(f"plugin directory {self.path} has no __init__.py")
        stamp = _tree_stamp(self.path)
        if self._module is None or stamp != self._stamp:
            parent, name = os.path.split(self.path)
            if parent not in sys.path:
                sys.path.insert(0, parent)
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[mod]
            importlib.invalidate_caches()
            self._module = importlib.import_module(name)
            self._stamp = stamp
        return vars(self._module)

    def function(self, name: str) -> Callable[..., Any]:
        """The entry point `name`, loading or reloading the plugin as needed."""
        with self._lock:
            namespace = self._load_package() if self.is_package else self._load_file()
        fn: object = namespace.get(name)
        if not callable(fn):
            raise PluginLoadError(MISSING_FUNCTION.get(name, f"the {name} function is not present in the plugin"))
        return fn


@dataclass
class Outcome:
    """The result of one invocation."""

    ok: bool
    error: str | None = None
    traceback: str | None = None
    # Buffered writes, to commit because the call succeeded (empty on failure).
    writes: dict[str, list[str]] = field(default_factory=dict)
    # What the function returned (request triggers use it).
    value: Any = None


class Trigger:
    """One trigger's plugin, cache and settings inside a worker."""

    def __init__(
        self,
        name: str,
        database: str,
        plugin_path: str,
        args: dict[str, str] | None,
        backend: Backend,
        trigger_cache: ScopeCache | None = None,
    ) -> None:
        self.name = name
        self.database = database
        self.code = PluginCode(plugin_path)
        # `args` is None for a trigger without arguments ({} stays {}).
        self.args = None if args is None else dict(args)
        self.backend = backend
        self.cache = trigger_cache or ScopeCache()

    def invoke(self, entry_point: str, *call_args: Any) -> Outcome:
        """Call `entry_point(influxdb3_local, *call_args, args)`; never raises."""
        local = LocalAPI(self.backend, self.database, PluginCache(self.cache, self.backend.global_cache()))
        try:
            fn = self.code.function(entry_point)
            # A fresh copy per call: a plugin that mutates its args cannot affect later calls.
            args = None if self.args is None else dict(self.args)
            value = fn(local, *call_args, args)
        except PluginLoadError as e:
            return Outcome(ok=False, error=str(e))
        except BaseException as e:  # SystemExit, KeyboardInterrupt included: the worker lives on
            return Outcome(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        return Outcome(ok=True, writes=local._writes, value=value)


if TYPE_CHECKING:

    def _local_api_is_a_plugin_api(local: LocalAPI) -> PluginAPI:
        """`LocalAPI` has everything `api.PluginAPI` promises plugins (checked by mypy only)."""
        return local
