"""Typed protocols for plugin authors (for type checkers; nothing here is needed at run time).

    from weir_plugin.api import PluginAPI, TableBatch

    def process_writes(influxdb3_local: PluginAPI, table_batches: list[TableBatch], args=None):
        ...
"""

from typing import Any, Dict, List, Optional, Protocol, TypedDict, Union

Row = Dict[str, Union[str, int, float, bool]]


class TableBatch(TypedDict):
    """One table's rows in a WAL flush: tags `str`, fields `int|float|bool|str`, `time` ns."""

    table_name: str
    rows: List[Row]


class Buildable(Protocol):
    def build(self) -> str: ...


class Cache(Protocol):
    def put(self, key: str, value: Any, ttl: Optional[float] = None, use_global: Optional[bool] = None) -> None: ...

    def get(self, key: str, default: Any = None, use_global: Optional[bool] = None) -> Any: ...

    def delete(self, key: str, use_global: Optional[bool] = None) -> bool: ...


class PluginAPI(Protocol):
    """The `influxdb3_local` object."""

    cache: Cache

    def info(self, *args: Any) -> None: ...

    def warn(self, *args: Any) -> None: ...

    def error(self, *args: Any) -> None: ...

    def query(self, query: str, args: Optional[Dict[str, str]] = None,
              database: Optional[str] = None) -> List[Dict[str, Any]]: ...

    def write(self, line_builder: Buildable) -> None: ...

    def write_to_db(self, db: str, line_builder: Buildable) -> None: ...

    def write_sync(self, line_builder: Buildable, no_sync: bool) -> None: ...

    def write_sync_to_db(self, db: str, line_builder: Buildable, no_sync: bool) -> None: ...
