"""The plugin cache: `influxdb3_local.cache.put/get/delete`.

The trigger scope holds live Python objects by reference and lives in the trigger's worker
process (lost if that process dies). `use_global=True` goes to the global scope, which spans
all triggers and processes: the worker hands it to a backend (in Weir, the plugin host, which
stores values pickled).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Protocol


class CacheScope(Protocol):
    """One cache scope as `PluginCache` uses it: the trigger scope (`ScopeCache`) or the global
    one the backend provides."""

    def put(self, key: str, value: Any, ttl: float | None = None) -> None: ...

    def get(self, key: str, default: Any = None) -> Any: ...

    def delete(self, key: str) -> bool: ...


class ScopeCache:
    """One cache scope: key → (value, expiry on the monotonic clock or None)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: dict[str, tuple[Any, float | None]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        expires = None if ttl is None else self._clock() + float(ttl)
        with self._lock:
            self._items[key] = (value, expires)

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return default
            value, expires = item
            if expires is not None and self._clock() >= expires:
                del self._items[key]
                return default
            return value

    def delete(self, key: str) -> bool:
        with self._lock:
            item = self._items.pop(key, None)
        if item is None:
            return False
        _, expires = item
        return expires is None or self._clock() < expires

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def check_ttl(ttl: float | str | None) -> float | None:
    """`ttl` as seconds, or None; negative, NaN and infinite values are refused."""
    if ttl is None:
        return None
    seconds = float(ttl)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cache ttl must be a finite, non-negative number of seconds, got {seconds}")
    return seconds


class PluginCache:
    """The `cache` attribute plugins see: trigger scope by default, global on request."""

    __slots__ = ("_global", "_trigger")

    def __init__(self, trigger_scope: CacheScope, global_scope: CacheScope) -> None:
        self._trigger = trigger_scope
        self._global = global_scope

    def _scope(self, use_global: bool | None) -> CacheScope:
        return self._global if use_global else self._trigger

    def put(self, key: str, value: Any, ttl: float | None = None, use_global: bool | None = None) -> None:
        self._scope(use_global).put(key, value, check_ttl(ttl))

    def get(self, key: str, default: Any = None, use_global: bool | None = None) -> Any:
        return self._scope(use_global).get(key, default)

    def delete(self, key: str, use_global: bool | None = None) -> bool:
        return self._scope(use_global).delete(key)
