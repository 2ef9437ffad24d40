"""The plugin cache: `influxdb3_local.cache.put/get/delete`.

The trigger scope holds live Python objects by reference and lives in the trigger's worker
process (lost if that process dies). `use_global=True` goes to the global scope, which spans
all triggers and processes: the worker hands it to a backend (in Weir, the plugin host, which
stores values pickled).
"""

import math
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

_MISSING = object()


class ScopeCache:
    """One cache scope: key → (value, expiry on the monotonic clock or None)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._items: Dict[str, Tuple[Any, Optional[float]]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, value: Any, ttl: Optional[float] = None) -> None:
        expires = None if ttl is None else self._clock() + float(ttl)
        with self._lock:
            self._items[key] = (value, expires)

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            item = self._items.get(key, _MISSING)
            if item is _MISSING:
                return default
            value, expires = item
            if expires is not None and self._clock() >= expires:
                del self._items[key]
                return default
            return value

    def delete(self, key: str) -> bool:
        with self._lock:
            item = self._items.pop(key, _MISSING)
        if item is _MISSING:
            return False
        _, expires = item
        return expires is None or self._clock() < expires

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def check_ttl(ttl) -> Optional[float]:
    """`ttl` as seconds, or None; negative, NaN and infinite values are refused."""
    if ttl is None:
        return None
    ttl = float(ttl)
    if not math.isfinite(ttl) or ttl < 0:
        raise ValueError(f"cache ttl must be a finite, non-negative number of seconds, got {ttl}")
    return ttl


class PluginCache:
    """The `cache` attribute plugins see: trigger scope by default, global on request."""

    __slots__ = ("_trigger", "_global")

    def __init__(self, trigger_scope: ScopeCache, global_scope):
        self._trigger = trigger_scope
        self._global = global_scope

    def _scope(self, use_global):
        return self._global if use_global else self._trigger

    def put(self, key: str, value: Any, ttl: Optional[float] = None, use_global: Optional[bool] = None) -> None:
        self._scope(use_global).put(key, value, check_ttl(ttl))

    def get(self, key: str, default: Any = None, use_global: Optional[bool] = None) -> Any:
        return self._scope(use_global).get(key, default)

    def delete(self, key: str, use_global: Optional[bool] = None) -> bool:
        return self._scope(use_global).delete(key)
