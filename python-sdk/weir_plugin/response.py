"""Turning what `process_request` returns into an HTTP answer (docs/COMPATIBILITY.md §5).

In order:

1. an object whose `__flask_response__()` is truthy (or any object with `status_code` and
   `get_data()`, such as a Flask/Werkzeug response): its status, data and headers;
2. a tuple: `(body[, status | headers][, headers])` as Flask reads it, or — Weir — with an
   `int` status first, `(status[, headers], body)`, the order InfluxDB's own example uses;
3. a bare body.

Bodies: `str` → `text/html; charset=utf-8`; `dict`/`list` → JSON; `bytes` → binary
(`application/octet-stream`); other iterables are concatenated (their items converted the
same way); anything else → `str(x)` as `text/plain`. Headers the plugin gives override the
content type.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

HTML = "text/html; charset=utf-8"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"


class ResponseError(Exception):
    """The return value cannot be turned into an HTTP answer."""


def _body(value: Any) -> tuple[bytes, str]:
    if isinstance(value, str):
        return value.encode("utf-8"), HTML
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), BINARY
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode("utf-8"), JSON
    if isinstance(value, Iterable):
        parts = [_body(item) for item in value]
        data = b"".join(p[0] for p in parts)
        kinds = {p[1] for p in parts}
        return data, kinds.pop() if len(kinds) == 1 else TEXT
    return str(value).encode("utf-8"), TEXT


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    items = value.items() if isinstance(value, Mapping) else value
    try:
        return {str(k): str(v) for k, v in items}
    except (TypeError, ValueError):
        raise ResponseError(f"expected a dictionary in header item, got {value!r}") from None


def _status(value: object) -> int:
    # 1xx codes are interim answers, never a final one.
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise ResponseError(f"invalid HTTP status {value!r}: expected an int from 200 to 599")
    return value


def _is_flask(value: Any) -> bool:
    marker = getattr(value, "__flask_response__", None)
    if callable(marker):
        try:
            return bool(marker())
        except Exception:
            return False
    return hasattr(value, "status_code") and callable(getattr(value, "get_data", None))


def to_response(value: Any) -> tuple[int, dict[str, str], bytes]:
    """`(status, headers, body)` for a `process_request` return value."""
    status, headers = 200, {}
    if _is_flask(value):
        data = value.get_data()
        body, kind = _body(data)
        status = _status(int(getattr(value, "status_code", 200)))
        headers = _headers(getattr(value, "headers", None))
    elif isinstance(value, tuple):
        if not value:
            raise ResponseError("the plugin returned an empty tuple")
        if isinstance(value[0], int) and not isinstance(value[0], bool):
            # Weir: (status, body) or (status, headers, body).
            if len(value) == 2:
                status, raw = _status(value[0]), value[1]
            elif len(value) == 3:
                status, headers, raw = _status(value[0]), _headers(value[1]), value[2]
            else:
                raise ResponseError(f"a tuple starting with a status has 2 or 3 items, got {len(value)}")
        else:
            raw = value[0]
            if len(value) == 2:
                if isinstance(value[1], int) and not isinstance(value[1], bool):
                    status = _status(value[1])
                else:
                    headers = _headers(value[1])
            elif len(value) == 3:
                status, headers = _status(value[1]), _headers(value[2])
            elif len(value) > 3:
                raise ResponseError(f"a response tuple has at most 3 items, got {len(value)}")
        body, kind = _body(raw)
    else:
        body, kind = _body(value)
    if not any(k.lower() == "content-type" for k in headers):
        headers = {"content-type": kind, **headers}
    return status, headers, body
