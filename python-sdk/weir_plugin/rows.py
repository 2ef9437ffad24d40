"""WAL rows as the plugin host sends them, turned into `process_writes`'s `table_batches`.

When the worker speedups are built (`native.py`), the host sends WAL calls' tables as
columns rather than as ready-made row dicts (the worker's `init` says `"columns": true`),
marshal-encoded:

    [tables, ...]  where a table is    [table_name, segments]
                   a segment is        [row_count, columns]  (one Arrow record batch)
                   a column is         [name, kind, present, data, values]

`present` is None (every row has a value) or bytes with one byte per row, 0 meaning null:
the key is left out of that row, as InfluxDB 3 does. `kind` says what `data` holds:

    F64  0  little-endian f64 per row          BOOL 3  one byte per row, 0 or 1
    I64  1  little-endian i64 per row          REF  4  little-endian u32 per row: an index
    U64  2  little-endian u64 per row                  into `values` (a list of str: tags)
                                               OBJ  5  a list with the row's Python value

Rows keep the column order of their segment; the segments of a table follow each other.
The C builder takes only the exact built-in types marshal produces (list, str, int, bytes),
so no Python code can run while it holds references into the input; anything else, and
row counts that cannot be real, raise `ValueError`.
`_native.wal_rows` builds the dicts in C; `python_rows` here is the same thing in Python, for
a worker whose speedups failed to load, and the reference the tests hold the C code to.
"""

from __future__ import annotations

import array
import sys
from typing import Any, Literal, Union

from . import native

F64, I64, U64, BOOL, REF, OBJ = range(6)

# Array formats of the fixed-width columns (and of REF indices).
_Format = Literal["d", "q", "Q", "I"]
_FORMATS: dict[int, _Format] = {F64: "d", I64: "q", U64: "Q"}
_Values = Union["memoryview[int]", "memoryview[float]", "array.array[int]", "array.array[float]"]


def _little_endian(data: Any, fmt: _Format) -> _Values:
    """`data` as a sequence of little-endian values of array format `fmt`."""
    view = memoryview(data).cast(fmt)
    if sys.byteorder == "little":
        return view
    swapped = array.array(fmt, view)
    swapped.byteswap()
    return swapped


def _column_values(kind: int, present: Any, data: Any, values: Any) -> list[Any]:
    if kind in _FORMATS:
        return _little_endian(data, _FORMATS[kind]).tolist()
    if kind == BOOL:
        return [b != 0 for b in bytes(data)]
    if kind == REF:
        idx = _little_endian(data, "I")
        # A null row's index is never read, so it may be anything.
        nv = len(values)
        out = [values[i] if i < nv else None for i in idx]
        if any(i >= nv and (present is None or present[row]) for row, i in enumerate(idx)):
            raise ValueError("wal_rows: a value index is out of range")
        return out
    if kind == OBJ:
        return list(data)
    raise ValueError(f"unknown column kind {kind}")


def python_rows(segments: list[Any]) -> list[dict[str, Any]]:
    """The rows of `segments`, built in Python."""
    out: list[dict[str, Any]] = []
    for n, columns in segments:
        keys = [c[0] for c in columns]
        masks = [c[2] for c in columns]
        if n < 0 or any(m is not None and len(m) != n for m in masks):
            raise ValueError("wal_rows: a bad row count or presence mask")
        cols = [_column_values(kind, present, data, values) for _, kind, present, data, values in columns]
        for c in cols:
            if len(c) != n:
                raise ValueError("wal_rows: a column does not hold one value per row")
        if all(m is None for m in masks):
            if cols:
                out.extend(dict(zip(keys, vals)) for vals in zip(*cols))
            else:
                out.extend({} for _ in range(n))
            continue
        present = [bytes(m) if m is not None else None for m in masks]
        for i in range(n):
            out.append({k: col[i] for k, col, p in zip(keys, cols, present) if p is None or p[i]})
    return out


def wal_tables(tables: list[Any]) -> list[dict[str, Any]]:
    """`table_batches` from the columns the host sent."""
    speedups = native.load()
    build = speedups.wal_rows if speedups is not None else python_rows
    return [{"table_name": name, "rows": build(segments)} for name, segments in tables]
