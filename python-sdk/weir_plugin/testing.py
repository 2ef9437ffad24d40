"""Run plugins offline, in process, for unit tests: no server, no plugin host.

    from weir_plugin.testing import PluginHarness

    h = PluginHarness("my_plugin.py", database="sensors", args={"threshold": "10"})
    result = h.wal([{"table_name": "cpu", "rows": [{"host": "a", "usage": 99.0, "time": 1}]}])
    assert result["database_writes"] == {"sensors": ["alerts,host=a usage=99.0"]}

Results have the shape of the server's dry-run endpoints (`log_lines`, `database_writes`,
`errors`). Queries are answered by `queries`: a dict from SQL text to rows, or a function
`(database, sql, params) -> rows`; anything else raises like a failed server query.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Callable, TypedDict, Union, cast

from .cache import ScopeCache
from .engine import BackendError, Trigger, install_builtins
from .response import to_response

Rows = list[dict[str, Any]]
Queries = Union[dict[str, Rows], Callable[[str, str, Any], Rows]]


class Result(TypedDict):
    """What `PluginHarness.wal` and `schedule` return."""

    log_lines: list[str]
    database_writes: dict[str, list[str]]
    errors: list[str]
    return_value: Any
    traceback: str | None


class HttpResponse(TypedDict):
    """The HTTP answer the server would send for a `process_request` return value."""

    status: int
    headers: dict[str, str]
    body: bytes


class RequestResult(Result):
    """What `PluginHarness.request` returns: `response` is None when the call failed."""

    response: HttpResponse | None


class _RecordingBackend:
    def __init__(self, queries: Queries, global_cache: ScopeCache) -> None:
        self.queries = queries
        self.logs: list[str] = []
        self.sync_writes: dict[str, list[str]] = {}
        self._global = global_cache

    def log(self, level: str, text: str) -> None:
        self.logs.append(f"{level}: {text}")

    def query(self, database: str, sql: str, params: dict[str, Any] | None) -> Rows:
        if callable(self.queries):
            return self.queries(database, sql, params)
        if sql in self.queries:
            return self.queries[sql]
        raise BackendError(f"no canned answer for this query (known: {sorted(self.queries)})")

    def write(self, database: str, lines: list[str], no_sync: bool) -> None:
        self.sync_writes.setdefault(database, []).extend(lines)

    def global_cache(self) -> ScopeCache:
        return self._global


class PluginHarness:
    """A plugin with its trigger cache, kept across calls like a real trigger's worker."""

    def __init__(
        self,
        path: str,
        database: str = "db",
        args: dict[str, str] | None = None,
        queries: Queries | None = None,
    ) -> None:
        install_builtins()
        self.global_cache = ScopeCache()
        self.backend = _RecordingBackend(queries or {}, self.global_cache)
        self.trigger = Trigger("test", database, path, args, self.backend)

    def _run(self, entry_point: str, *call_args: Any) -> Result:
        self.backend.logs = []
        self.backend.sync_writes = {}
        outcome = self.trigger.invoke(entry_point, *call_args)
        writes: dict[str, list[str]] = {db: list(lines) for db, lines in self.backend.sync_writes.items()}
        for db, lines in outcome.writes.items():
            writes.setdefault(db, []).extend(lines)
        # A failed outcome always has its error text.
        errors = [] if outcome.ok else [cast(str, outcome.error)]
        return {
            "log_lines": list(self.backend.logs),
            "database_writes": writes,
            "errors": errors,
            "return_value": outcome.value,
            "traceback": outcome.traceback,
        }

    def wal(self, table_batches: Sequence[Mapping[str, Any]]) -> Result:
        """Call `process_writes` with these table batches."""
        return self._run("process_writes", table_batches)

    def schedule(self, call_time: datetime.datetime | None = None) -> Result:
        """Call `process_scheduled_call` (naive UTC `call_time`, whole seconds, by default now)."""
        if call_time is None:
            now = datetime.datetime.now(datetime.timezone.utc)
            call_time = datetime.datetime.fromtimestamp(int(now.timestamp()), datetime.timezone.utc).replace(
                tzinfo=None
            )
        return self._run("process_scheduled_call", call_time)

    def request(
        self,
        query_parameters: Mapping[str, str] | None = None,
        request_headers: Mapping[str, str] | None = None,
        request_body: bytes = b"",
    ) -> RequestResult:
        """Call `process_request`; the raw return value is in `return_value` and the HTTP answer
        the server would send in `response` (`{"status", "headers", "body"}`, body as bytes)."""
        headers = {
            str(k).lower(): v for k, v in dict(request_headers or {}).items() if str(k).lower() != "authorization"
        }
        result: RequestResult = {
            **self._run("process_request", dict(query_parameters or {}), headers, bytes(request_body)),
            "response": None,
        }
        if not result["errors"]:
            try:
                status, out_headers, body = to_response(result["return_value"])
                result["response"] = {"status": status, "headers": out_headers, "body": body}
            except Exception as e:  # reported like the server reports it
                result["errors"].append(f"{type(e).__name__}: {e}")
        return result
