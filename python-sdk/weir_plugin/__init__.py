"""Weir processing-engine SDK.

- `LineBuilder` and its errors (plugins get `LineBuilder` as a builtin; import it from here
  for type checkers and tests);
- `weir_plugin.api`: typed protocols of the `influxdb3_local` object plugins receive;
- `weir_plugin.testing.PluginHarness`: run a plugin offline in unit tests;
- `weir_plugin.worker`: the worker process the plugin host spawns (not for direct use).
"""

from __future__ import annotations

from .line_builder import (
    InfluxDBError,
    InvalidKeyError,
    InvalidLineError,
    InvalidMeasurementError,
    LineBuilder,
)

__all__ = [
    "InfluxDBError",
    "InvalidKeyError",
    "InvalidLineError",
    "InvalidMeasurementError",
    "LineBuilder",
]
__version__ = "0.1.0"
