"""Run plugins offline, in process, for unit tests: no server, no plugin host.

    from weir_plugin.testing import PluginHarness

    h = PluginHarness("my_plugin.py", database="sensors", args={"threshold": "10"})
    result = h.wal([{"table_name": "cpu", "rows": [{"host": "a", "usage": 99.0, "time": 1}]}])
    assert result["database_writes"] == {"sensors": ["alerts,host=a usage=99.0"]}

Results have the shape of the server's dry-run endpoints (`log_lines`, `database_writes`,
`errors`). Queries are answered by `queries`: a dict from SQL text to rows, or a function
`(database, sql, params) -> rows`; anything else raises like a failed server query.
"""

import datetime
from typing import Any, Callable, Dict, List, Optional, Union

from .cache import ScopeCache
from .engine import BackendError, Trigger, install_builtins
from .response import to_response

Rows = List[Dict[str, Any]]


class _RecordingBackend:
    def __init__(self, queries, global_cache: ScopeCache):
        self.queries = queries
        self.logs: List[str] = []
        self.sync_writes: Dict[str, List[str]] = {}
        self._global = global_cache

    def log(self, level: str, text: str) -> None:
        self.logs.append(f"{level}: {text}")

    def query(self, database, sql, params):
        if callable(self.queries):
            return self.queries(database, sql, params)
        if sql in self.queries:
            return self.queries[sql]
        raise BackendError(f"no canned answer for this query (known: {sorted(self.queries)})")

    def write(self, database, lines, no_sync):
        self.sync_writes.setdefault(database, []).extend(lines)

    def global_cache(self):
        return self._global


class PluginHarness:
    """A plugin with its trigger cache, kept across calls like a real trigger's worker."""

    def __init__(self, path: str, database: str = "db", args: Optional[Dict[str, str]] = None,
                 queries: Union[Dict[str, Rows], Callable[[str, str, Any], Rows], None] = None):
        install_builtins()
        self.global_cache = ScopeCache()
        self.backend = _RecordingBackend(queries or {}, self.global_cache)
        self.trigger = Trigger("test", database, path, args, self.backend)

    def _run(self, entry_point: str, *call_args) -> Dict[str, Any]:
        self.backend.logs = []
        self.backend.sync_writes = {}
        outcome = self.trigger.invoke(entry_point, *call_args)
        writes: Dict[str, List[str]] = {db: list(lines) for db, lines in self.backend.sync_writes.items()}
        for db, lines in outcome.writes.items():
            writes.setdefault(db, []).extend(lines)
        errors = [] if outcome.ok else [outcome.error]
        return {"log_lines": list(self.backend.logs), "database_writes": writes, "errors": errors,
                "return_value": outcome.value, "traceback": outcome.traceback}

    def wal(self, table_batches: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Call `process_writes` with these table batches."""
        return self._run("process_writes", table_batches)

    def schedule(self, call_time: Optional[datetime.datetime] = None) -> Dict[str, Any]:
        """Call `process_scheduled_call` (naive UTC `call_time`, whole seconds, by default now)."""
        if call_time is None:
            now = datetime.datetime.now(datetime.timezone.utc)
            call_time = datetime.datetime.fromtimestamp(int(now.timestamp()), datetime.timezone.utc).replace(tzinfo=None)
        return self._run("process_scheduled_call", call_time)

    def request(self, query_parameters=None, request_headers=None, request_body: bytes = b"") -> Dict[str, Any]:
        """Call `process_request`; the raw return value is in `return_value` and the HTTP answer
        the server would send in `response` (`{"status", "headers", "body"}`, body as bytes)."""
        headers = {str(k).lower(): v for k, v in dict(request_headers or {}).items() if str(k).lower() != "authorization"}
        result = self._run("process_request", dict(query_parameters or {}), headers, bytes(request_body))
        result["response"] = None
        if not result["errors"]:
            try:
                status, out_headers, body = to_response(result["return_value"])
                result["response"] = {"status": status, "headers": out_headers, "body": body}
            except Exception as e:  # noqa: BLE001 - reported like the server reports it
                result["errors"].append(f"{type(e).__name__}: {e}")
        return result
