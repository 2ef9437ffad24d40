"""Typed protocols for plugin authors (for type checkers; nothing here is needed at run time).

    from weir_plugin.api import PluginAPI, TableBatch

    def process_writes(influxdb3_local: PluginAPI, table_batches: list[TableBatch], args=None):
        ...

`PluginAPI` is the `influxdb3_local` object (`engine.LocalAPI` implements it).
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, Union

Row = dict[str, Union[str, int, float, bool]]


class TableBatch(TypedDict):
    """One table's rows in a WAL flush: tags `str`, fields `int|float|bool|str`, `time` ns."""

    table_name: str
    rows: list[Row]


class Buildable(Protocol):
    def build(self) -> str: ...


class Cache(Protocol):
    def put(self, key: str, value: Any, ttl: float | None = None, use_global: bool | None = None) -> None: ...

    def get(self, key: str, default: Any = None, use_global: bool | None = None) -> Any: ...

    def delete(self, key: str, use_global: bool | None = None) -> bool: ...


class PluginAPI(Protocol):
    """The `influxdb3_local` object."""

    cache: Cache

    def info(self, *args: Any) -> None: ...

    def warn(self, *args: Any) -> None: ...

    def error(self, *args: Any) -> None: ...

    def query(
        self, query: str, args: dict[str, str] | None = None, database: str | None = None
    ) -> list[dict[str, Any]]: ...

    def write(self, line_builder: Buildable) -> None: ...

    def write_to_db(self, db: str, line_builder: Buildable) -> None: ...

    def write_sync(self, line_builder: Buildable, no_sync: bool) -> None: ...

    def write_sync_to_db(self, db: str, line_builder: Buildable, no_sync: bool) -> None: ...
