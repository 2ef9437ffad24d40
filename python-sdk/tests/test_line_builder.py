"""LineBuilder output, byte for byte (docs/COMPATIBILITY.md §4)."""

import pytest

from weir_plugin import InvalidKeyError, InvalidLineError, InvalidMeasurementError, LineBuilder


def test_every_field_type_and_order():
    line = (
        LineBuilder("cpu")
        .tag("host", "a")
        .tag("region", 7)
        .int64_field("n", -3)
        .uint64_field("u", 5)
        .float64_field("f", 2.0)
        .float64_field("g", 2.5)
        .string_field("s", "hi")
        .bool_field("b", True)
        .bool_field("c", False)
        .time_ns(1_700_000_000_000_000_000)
        .build()
    )
    assert line == 'cpu,host=a,region=7 n=-3i,u=5u,f=2.0,g=2.5,s="hi",b=t,c=f 1700000000000000000'


def test_no_timestamp_means_server_time():
    assert LineBuilder("m").float64_field("v", 1).build() == "m v=1.0"


def test_escaping():
    line = LineBuilder("my,meas").tag("tag\\key", "a b,c=d").string_field("field\\key", 'say "hi" \\o/').build()
    assert line == 'my\\,meas,tag\\\\key=a\\ b\\,c\\=d field\\\\key="say \\"hi\\" \\\\o/"'


def test_string_escaping_order_backslash_then_quote():
    # The wrong order (quotes first) would give \\\\" here.
    assert LineBuilder("m").string_field("s", '"').build() == 'm s="\\""'
    assert LineBuilder("m").string_field("s", "\\").build() == 'm s="\\\\"'


def test_setters_overwrite_in_place_keeping_order():
    line = LineBuilder("m").int64_field("a", 1).int64_field("b", 2).int64_field("a", 3).build()
    assert line == "m a=3i,b=2i"


def test_errors():
    with pytest.raises(InvalidMeasurementError):
        LineBuilder("has space")
    for bad in ["", "a b", "a,b", "a=b"]:
        with pytest.raises(InvalidKeyError):
            LineBuilder("m").tag(bad, "v")
        with pytest.raises(InvalidKeyError):
            LineBuilder("m").float64_field(bad, 1.0)
    with pytest.raises(ValueError):
        LineBuilder("m").uint64_field("u", -1)
    with pytest.raises(InvalidLineError) as e:
        LineBuilder("m").tag("t", "v").build()
    assert str(e.value) == "At least one field is required: m,t=v"


def test_float_formatting():
    b = LineBuilder("m")
    assert b.float64_field("v", 1e20).build() == "m v=100000000000000000000.0"
    assert LineBuilder("m").float64_field("v", 0.1).build() == "m v=0.1"
    assert LineBuilder("m").float64_field("v", -7.0).build() == "m v=-7.0"
