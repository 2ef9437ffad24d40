"""The worker process the plugin host spawns for a trigger: `python -m weir_plugin.worker`.

The host passes a connected socket as an inherited file descriptor (`WEIR_IPC_FD`); stdin,
stdout and stderr are never the channel, so whatever a plugin prints is captured (and sent
to the engine log) without corrupting it.

Frames, both directions: `u32 LE n` then `n` bytes: `u32 LE h`, `h` bytes of UTF-8 JSON (the
header, with a "type"), and the rest the body (marshal-encoded Python values for rows and
call arguments, which the host writes directly; pickle for global-cache values). With
`columns` in `init`, WAL calls' rows come as columns and are built into dicts here (rows.py).
`arena_cache` in `init` (optional) turns the speedups' arena cache on or off on its own
(`arena_cache_enabled`); `ready` says whether it is on.

host → worker                                worker → host
  init {trigger, database, plugin_path,        ready {pid, python, native, arena_cache}
        args, run_async, threads, dry_run,     log {level, text, invocation}
        columns, arena_cache?}                 done {id, ok, error, traceback, writes,
  invoke {id, entry} + marshal([args...]),           response {status, headers}} + body
    or {id, entry, staged} (no body)                 (or {id, unstaged}: call again
  stage {id} + marshal([args...]):                   with the arguments)
    the next call's arguments, sent while      query {id, database, sql, params}
    the current one runs                       write {id, database, lines, no_sync}
  query_result {id, error} + marshal(rows)     cache {id, op, key, ttl} + pickle (global
  write_result {id, error}                           scope only; the trigger scope is local)
  cache_result {id, found}
        + pickle(value)
  shutdown {} (or the host kills the process)

A synchronous trigger runs one invocation at a time, in arrival order; an asynchronous one
runs up to `threads` at once on threads of this process (one live trigger cache).
"""

from __future__ import annotations

import datetime
import io
import json
import marshal
import os
import pickle
import queue
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Union, cast

from . import native
from .engine import BackendError, Trigger, install_builtins
from .response import to_response
from .rows import wal_tables

_LEN = struct.Struct("<I")

# A frame's body: a view into the received frame, or bytes.
Body = Union[bytes, memoryview]
# A reply from the host: its header and body.
Reply = tuple[dict[str, Any], Body]


class ChannelClosed(Exception):
    """The plugin host went away."""


# The largest frame the plugin host accepts (weir_proto::MAX_MESSAGE_BYTES; a test checks
# both agree).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class MessageTooLarge(ValueError):
    """A message to the plugin host over :data:`MAX_MESSAGE_BYTES`."""


class Channel:
    """Framed messages over the inherited socket; sending is thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # A buffered binary reader (typeshed types makefile with a buffer size as plain IOBase).
        self._reader = cast(io.BufferedReader, sock.makefile("rb", buffering=1 << 20))
        self._send_lock = threading.Lock()

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        # Lone surrogates (possible in plugin text) become U+FFFD: the host reads strict UTF-8.
        h = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8", "replace")
        size = 4 + len(h) + len(body)
        if size > MAX_MESSAGE_BYTES:
            what = "the answer and buffered writes" if header.get("type") == "done" else "the message"
            error = f"{what} of this call are {size} bytes, over the {MAX_MESSAGE_BYTES}-byte message limit"
            if header.get("type") != "done":
                raise MessageTooLarge(error)
            # The call fails with the sizes; the worker lives on.
            header = {"type": "done", "id": header.get("id"), "ok": False, "error": error, "writes": {}}
            h = json.dumps(header, separators=(",", ":")).encode("utf-8")
            body = b""
            size = 4 + len(h)
        frame = _LEN.pack(size) + _LEN.pack(len(h)) + h
        with self._send_lock:
            self._sock.sendall(frame)
            if body:
                self._sock.sendall(body)

    def _read_exact(self, n: int) -> bytes:
        data = self._reader.read(n)
        if data is None or len(data) != n:
            raise ChannelClosed()
        return data

    def recv(self) -> tuple[dict[str, Any], memoryview]:
        """The next frame: its header and a view of its body (no copy: a WAL batch's body
        runs to megabytes, and marshal and pickle read views)."""
        (n,) = _LEN.unpack(self._read_exact(4))
        frame = self._read_exact(n)
        (h,) = _LEN.unpack_from(frame, 0)
        header: dict[str, Any] = json.loads(frame[4 : 4 + h])
        return header, memoryview(frame)[4 + h :]


class _Pending:
    """Replies the worker waits for, by request id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, tuple[threading.Event, list[Reply]]] = {}
        self._closed = False

    def open(self) -> tuple[int, threading.Event, list[Reply]]:
        with self._lock:
            if self._closed:
                raise ChannelClosed()
            self._next += 1
            slot: list[Reply] = []
            event = threading.Event()
            self._waiting[self._next] = (event, slot)
            return self._next, event, slot

    def resolve(self, rid: int, header: dict[str, Any], body: Body) -> None:
        with self._lock:
            entry = self._waiting.pop(rid, None)
        if entry is not None:
            entry[1].append((header, body))
            entry[0].set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, {}
        for event, _ in waiting.values():
            event.set()


_current_invocation = threading.local()


class HostBackend:
    """The plugin API's backend: everything goes to the plugin host over the channel.

    In a dry run (`weir test`), `write_sync*` lines are captured and reported with the
    call's other writes instead of being written.
    """

    def __init__(self, channel: Channel, dry_run: bool = False) -> None:
        self.channel = channel
        self.pending = _Pending()
        self._global = _GlobalCache(self)
        self.dry_run = dry_run
        self.captured: dict[str, list[str]] = {}

    def call(self, header: dict[str, Any], body: bytes = b"") -> Reply:
        rid, event, slot = self.pending.open()
        header["id"] = rid
        self.channel.send(header, body)
        event.wait()
        if not slot:
            raise BackendError("the plugin host connection closed")
        return slot[0]

    def log(self, level: str, text: str) -> None:
        self.channel.send(
            {"type": "log", "level": level, "text": text, "invocation": getattr(_current_invocation, "id", None)}
        )

    def query(self, database: str, sql: str, params: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        if params is not None:
            params = {str(k): v if isinstance(v, str) else str(v) for k, v in dict(params).items()}
        header, body = self.call({"type": "query", "database": database, "sql": sql, "params": params})
        if header.get("error"):
            raise BackendError(header["error"])
        rows: list[dict[str, Any]] = marshal.loads(body) if body else []
        return rows

    def write(self, database: str, lines: list[str], no_sync: bool) -> None:
        if self.dry_run:
            self.captured.setdefault(database, []).extend(lines)
            return
        header, _ = self.call({"type": "write", "database": database, "lines": list(lines), "no_sync": no_sync})
        if header.get("error"):
            raise BackendError(header["error"])

    def global_cache(self) -> _GlobalCache:
        return self._global


class _GlobalCache:
    """The global cache scope, kept by the plugin host (values pickled)."""

    def __init__(self, backend: HostBackend) -> None:
        self._backend = backend

    def _op(self, op: str, key: str, value: Any = None, ttl: float | None = None) -> Reply:
        value_body = pickle.dumps(value) if op == "put" else b""
        header, body = self._backend.call({"type": "cache", "op": op, "key": key, "ttl": ttl}, value_body)
        if header.get("error"):
            raise BackendError(header["error"])
        return header, body

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._op("put", key, value, ttl)

    def get(self, key: str, default: Any = None) -> Any:
        header, body = self._op("get", key)
        return pickle.loads(body) if header.get("found") else default

    def delete(self, key: str) -> bool:
        header, _ = self._op("delete", key)
        return bool(header.get("found"))


class _LogWriter(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: complete lines go to the engine log."""

    def __init__(self, backend: HostBackend, level: str) -> None:
        self._backend = backend
        self._level = level
        self._buf = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        pending = getattr(self._buf, "text", "") + s
        *lines, rest = pending.split("\n")
        self._buf.text = rest
        for line in lines:
            try:
                self._backend.log(self._level, line)
            except OSError:
                pass
        return len(s)

    def flush(self) -> None:
        rest = getattr(self._buf, "text", "")
        if rest:
            self._buf.text = ""
            self._backend.log(self._level, rest)


def _call_args(entry: str, body: Body, columns: bool = False) -> list[Any]:
    args: list[Any] = marshal.loads(body) if body else []
    if columns and entry == "process_writes" and args:
        # WAL rows sent as columns (rows.py): the dicts are built here.
        args[0] = wal_tables(args[0])
    if entry == "process_scheduled_call":
        # A naive datetime from whole seconds; workers run with TZ=UTC, so naive UTC.
        args = [datetime.datetime.fromtimestamp(int(args[0]))]
    return args


ARENA_CACHE_ENV = "WEIR_WORKER_ARENA_CACHE"


def arena_cache_enabled(setting: object = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this worker keeps freed allocator arenas for the next batch (`keep_arenas`, with
    the speedups only): `init`'s `arena_cache` when the host sends one, else
    `WEIR_WORKER_ARENA_CACHE` (`0`, `false`, `no` or `off` turn it off); on by default. The
    row builder (`columns`) does not depend on it."""
    if setting is not None:
        return bool(setting)
    return environ.get(ARENA_CACHE_ENV, "").strip().lower() not in ("0", "false", "no", "off")


def serve(channel: Channel) -> int:
    """Run until the host says shutdown or goes away; the exit status."""
    header, _ = channel.recv()
    if header.get("type") != "init":
        raise RuntimeError(f"expected init, got {header.get('type')}")
    install_builtins()
    os.environ.setdefault("TZ", "UTC")
    backend = HostBackend(channel, dry_run=bool(header.get("dry_run")))
    trigger = Trigger(header["trigger"], header["database"], header["plugin_path"], header.get("args"), backend)
    sys.stdout = _LogWriter(backend, "INFO")
    sys.stderr = _LogWriter(backend, "WARN")

    columns = bool(header.get("columns"))

    def run(rid: int, entry: str, body: Body) -> None:
        _current_invocation.id = rid
        try:
            outcome = trigger.invoke(entry, *_call_args(entry, body, columns))
        except BaseException as e:  # bad arguments from the host: report, do not die
            channel.send(
                {
                    "type": "done",
                    "id": rid,
                    "ok": False,
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(),
                    "writes": {},
                }
            )
            return
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            _current_invocation.id = None
        writes = outcome.writes
        if backend.dry_run and backend.captured:
            merged: dict[str, list[str]] = {}
            for db, lines in list(backend.captured.items()) + list(writes.items()):
                merged.setdefault(db, []).extend(lines)
            backend.captured = {}
            writes = merged
        done: dict[str, Any] = {
            "type": "done",
            "id": rid,
            "ok": outcome.ok,
            "error": outcome.error,
            "traceback": outcome.traceback,
            "writes": writes,
        }
        answer = b""
        if entry == "process_request" and outcome.ok:
            try:
                status, headers, answer = to_response(outcome.value)
                done["response"] = {"status": status, "headers": headers}
            except Exception as e:  # any conversion failure is the plugin's error
                done.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(), writes={})
                answer = b""
        channel.send(done, answer)

    submit: Callable[[int, str, Body], object]
    if header.get("run_async"):
        pool = ThreadPoolExecutor(max_workers=max(1, int(header.get("threads") or 8)), thread_name_prefix="invocation")
        submit = lambda rid, entry, body: pool.submit(run, rid, entry, body)  # noqa: E731
    else:
        jobs: queue.Queue[tuple[int, str, Body] | None] = queue.Queue()

        def sequential() -> None:
            while True:
                job = jobs.get()
                if job is None:
                    return
                run(*job)

        threading.Thread(target=sequential, name="invocation", daemon=True).start()
        submit = lambda rid, entry, body: jobs.put((rid, entry, body))  # noqa: E731

    speedups = native.load()
    arena_cache = speedups is not None and arena_cache_enabled(header.get("arena_cache"))
    if speedups is not None and arena_cache:
        # Freed rows' memory stays mapped for the next batch instead of being faulted in again.
        speedups.keep_arenas(native.arena_budget())
    channel.send(
        {
            "type": "ready",
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "native": speedups is not None,
            "arena_cache": arena_cache,
        }
    )
    staged: tuple[int | None, Body] = (None, b"")
    body: Body
    try:
        while True:
            header, body = channel.recv()
            kind = header.get("type")
            if kind == "invoke":
                if "staged" in header:
                    staged_id, body = staged
                    staged = (None, b"")
                    if staged_id != header["staged"]:
                        # Not run: the host sends the call again with its arguments.
                        channel.send(
                            {
                                "type": "done",
                                "id": header["id"],
                                "ok": False,
                                "unstaged": True,
                                "writes": {},
                                "error": "staged arguments missing",
                            }
                        )
                        continue
                submit(header["id"], header["entry"], body)
            elif kind == "stage":
                # The next call's arguments, sent while the current call runs.
                staged = (header["id"], body)
            elif kind in ("query_result", "write_result", "cache_result"):
                backend.pending.resolve(header["id"], header, body)
            elif kind == "shutdown":
                return 0
    except ChannelClosed:
        return 0
    finally:
        backend.pending.close()


def main() -> None:
    fd = int(os.environ["WEIR_IPC_FD"])
    sock = socket.socket(fileno=fd)
    code = serve(Channel(sock))
    # Invocation threads may still be running plugin code: do not wait for them.
    os._exit(code)


if __name__ == "__main__":
    main()
