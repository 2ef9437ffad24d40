"""`LineBuilder`: builds one line of line protocol, exactly as InfluxDB 3's engine does.

Plugins use it without importing it: the worker puts it in `builtins` before any plugin
code runs.
"""

from __future__ import annotations

from collections import OrderedDict


class InfluxDBError(Exception):
    """Base class of the LineBuilder errors."""


class InvalidMeasurementError(InfluxDBError):
    """The measurement name is not allowed."""


class InvalidKeyError(InfluxDBError):
    """A tag or field key is empty or holds a space, comma or equals sign."""


class InvalidLineError(InfluxDBError):
    """The line cannot be built (no field)."""


def _escape_key(s: str) -> str:
    """Tag keys, tag values and field keys: backslash, comma, equals sign, space."""
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_measurement(s: str) -> str:
    return s.replace(",", "\\,").replace(" ", "\\ ")


def _escape_string_field(s: str) -> str:
    # Backslashes first, then quotes: the other order doubles the escapes of quotes.
    return s.replace("\\", "\\\\").replace('"', '\\"')


class LineBuilder:
    """One line of line protocol: `LineBuilder("cpu").tag("host", "a").float64_field("v", 1.5).build()`."""

    def __init__(self, measurement: str) -> None:
        if " " in measurement:
            raise InvalidMeasurementError("Measurement name cannot contain spaces")
        self.measurement = measurement
        self.tags: OrderedDict[str, str] = OrderedDict()
        self.fields: OrderedDict[str, str] = OrderedDict()
        self._timestamp_ns: int | None = None

    @staticmethod
    def _validate_key(key: str, kind: str) -> None:
        if not key:
            raise InvalidKeyError(f"{kind} key cannot be empty")
        if " " in key:
            raise InvalidKeyError(f"{kind} key '{key}' cannot contain spaces")
        if "," in key:
            raise InvalidKeyError(f"{kind} key '{key}' cannot contain commas")
        if "=" in key:
            raise InvalidKeyError(f"{kind} key '{key}' cannot contain equals signs")

    def tag(self, key: str, value: object) -> LineBuilder:
        """A tag; `value` is converted with `str()`."""
        self._validate_key(key, "tag")
        self.tags[key] = str(value)
        return self

    def uint64_field(self, key: str, value: int) -> LineBuilder:
        self._validate_key(key, "field")
        if value < 0:
            raise ValueError(f"uint64 field '{key}' cannot be negative")
        self.fields[key] = f"{value}u"
        return self

    def int64_field(self, key: str, value: int) -> LineBuilder:
        self._validate_key(key, "field")
        self.fields[key] = f"{value}i"
        return self

    def float64_field(self, key: str, value: float) -> LineBuilder:
        self._validate_key(key, "field")
        self.fields[key] = f"{int(value)}.0" if value % 1 == 0 else str(value)
        return self

    def string_field(self, key: str, value: str) -> LineBuilder:
        self._validate_key(key, "field")
        self.fields[key] = f'"{_escape_string_field(value)}"'
        return self

    def bool_field(self, key: str, value: bool) -> LineBuilder:
        self._validate_key(key, "field")
        self.fields[key] = "t" if value else "f"
        return self

    def time_ns(self, timestamp_ns: int) -> LineBuilder:
        self._timestamp_ns = timestamp_ns
        return self

    def build(self) -> str:
        line = _escape_measurement(self.measurement)
        if self.tags:
            line += "," + ",".join(f"{_escape_key(k)}={_escape_key(v)}" for k, v in self.tags.items())
        if not self.fields:
            raise InvalidLineError(f"At least one field is required: {line}")
        line += " " + ",".join(f"{_escape_key(k)}={v}" for k, v in self.fields.items())
        if self._timestamp_ns is not None:
            line += f" {self._timestamp_ns}"
        return line
