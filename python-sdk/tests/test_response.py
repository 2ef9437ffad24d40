"""Return-value conversion of request plugins (docs/COMPATIBILITY.md §5)."""

import json

import pytest

from weir_plugin.response import BINARY, HTML, JSON, TEXT, ResponseError, to_response


def test_bare_bodies():
    assert to_response("hi") == (200, {"content-type": HTML}, b"hi")
    assert to_response({"status": "ok"}) == (200, {"content-type": JSON}, b'{"status": "ok"}')
    assert to_response([1, 2]) == (200, {"content-type": JSON}, b"[1, 2]")
    assert to_response(b"\x00\x01") == (200, {"content-type": BINARY}, b"\x00\x01")
    assert to_response(42) == (200, {"content-type": TEXT}, b"42")
    # Other iterables are concatenated.
    assert to_response(x for x in ["a", "b"]) == (200, {"content-type": HTML}, b"ab")


def test_flask_order_tuples():
    assert to_response(("created", 201)) == (201, {"content-type": HTML}, b"created")
    assert to_response(("x", {"X-A": "1"})) == (200, {"content-type": HTML, "X-A": "1"}, b"x")
    status, headers, body = to_response(({"a": 1}, 202, {"X-B": "2"}))
    assert (status, headers["X-B"], json.loads(body)) == (202, "2", {"a": 1})


def test_status_first_tuples_as_in_the_influxdb_example():
    body = {"ok": True}
    status, headers, raw = to_response((200, {"Content-Type": "application/json"}, body))
    # The plugin's own content type wins (no duplicate in another case).
    assert (status, headers, json.loads(raw)) == (200, {"Content-Type": "application/json"}, body)
    assert to_response((404, "nope")) == (404, {"content-type": HTML}, b"nope")


def test_flask_like_objects():
    class Resp:
        status_code = 418
        headers = {"X-Teapot": "yes"}  # noqa: RUF012 - a class attribute, as on a Flask response

        def __flask_response__(self):
            return True

        def get_data(self):
            return b"short and stout"

    assert to_response(Resp()) == (418, {"content-type": BINARY, "X-Teapot": "yes"}, b"short and stout")


@pytest.mark.parametrize("bad", [(), ("a", 1, {}, 4), (99, "x"), (101, "x"), (200, "not headers", "b"), ("x", True)])
def test_bad_shapes_are_clear_errors(bad):
    with pytest.raises(ResponseError):
        to_response(bad)
