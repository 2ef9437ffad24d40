"""WAL rows sent as columns (rows.py) built into dicts, in C and in Python, and the C
module's build and arena cache."""

import importlib.util
import os
import struct
import subprocess
import sys
import textwrap
import types

import pytest

from weir_plugin import native, rows


def segments():
    return [
        [
            3,
            [
                ["host", rows.REF, None, struct.pack("<3I", 0, 1, 0), ["a", "b"]],
                ["usage", rows.F64, b"\1\0\1", struct.pack("<3d", 1.5, 0.0, -0.0), None],
                ["n", rows.I64, b"\0\1\1", struct.pack("<3q", 0, -2, 2**63 - 1), None],
                ["u", rows.U64, b"\1\0\0", struct.pack("<3Q", 2**64 - 1, 0, 0), None],
                ["ok", rows.BOOL, b"\1\1\0", b"\1\0\0", None],
                ["note", rows.OBJ, b"\0\1\0", [None, "ü", None], None],
                # A null REF row may hold any index: it is never read.
                ["dc", rows.REF, b"\1\0\1", struct.pack("<3I", 0, 99, 0), ["eu"]],
                ["time", rows.I64, None, struct.pack("<3q", 1, 2, 1_700_000_000_000_000_000), None],
            ],
        ],
        [1, [["time", rows.I64, None, struct.pack("<q", 9), None], ["blob", rows.OBJ, None, [b"\0"], None]]],
        [0, []],
        [2, []],
    ]


EXPECTED = [
    {"host": "a", "usage": 1.5, "u": 2**64 - 1, "ok": True, "dc": "eu", "time": 1},
    {"host": "b", "n": -2, "ok": False, "note": "ü", "time": 2},
    {"host": "a", "usage": -0.0, "n": 2**63 - 1, "dc": "eu", "time": 1_700_000_000_000_000_000},
    {"time": 9, "blob": b"\0"},
    {},
    {},
]


def test_python_and_c_build_the_same_rows_in_column_order(c_module):
    for build in (rows.python_rows, c_module.wal_rows):
        got = build(segments())
        assert got == EXPECTED
        assert [list(r) for r in got] == [list(r) for r in EXPECTED], "keys in column order"
        assert all(type(r) is dict for r in got)
        # Tag values are shared, not copied per row.
        assert got[0]["host"] is got[2]["host"]


def test_the_c_builder_leaves_the_collector_as_it_found_it(c_module):
    import gc

    assert gc.isenabled()
    c_module.wal_rows(segments())
    assert gc.isenabled()
    with pytest.raises(ValueError):
        c_module.wal_rows([[1, [["x", 9, None, b"", None]]]])
    assert gc.isenabled()
    gc.disable()
    try:
        c_module.wal_rows(segments())
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[1, [["x", 9, None, b"", None]]]], "unknown kind"),
        ([[2, [["x", rows.F64, None, b"\0" * 8, None]]]], "one value per row"),
        ([[1, [["x", rows.REF, None, struct.pack("<I", 5), ["a"]]]]], "index is out of range"),
        ([[1, [["x", rows.OBJ, None, [], None]]]], "one item per row"),
        ([[1, [["x", rows.F64, b"\1\1", b"\0" * 8, None]]]], "presence mask"),
        ([[1, [["x", rows.F64, None]]]], "[name, kind, present, data, values]"),
        ([[-1, []]], "negative or impossibly large row count"),
        ([[1]], "[row count, columns]"),
        # Counts whose sum (or size in bytes) wraps around.
        ([[2**63 - 1, []], [2**63 - 1, []], [12, []]], "impossibly large row count"),
        ([[2**61, [["a", rows.F64, None, b"", None]]]] * 8, "impossibly large row count"),
        # Only the exact types marshal makes: a subclass could run Python code mid-build.
        ([[1, [[type("S", (str,), {})("x"), rows.F64, None, b"\0" * 8, None]]]], "the name is not a str"),
        ([[1, [["x", type("I", (int,), {})(0), None, b"\0" * 8, None]]]], "the kind is not an int"),
        ([[1, [["x", rows.F64, None, bytearray(8), None]]]], "not bytes"),
        ([[1, [["x", rows.F64, bytearray(b"\1"), b"\0" * 8, None]]]], "presence mask is not bytes"),
        ([[1, [("x", rows.F64, None, b"\0" * 8, None)]]], "[name, kind, present, data, values]"),
    ],
)
def test_the_c_builder_rejects_malformed_columns(c_module, bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        c_module.wal_rows(bad)


def test_wal_tables_uses_python_when_the_speedups_are_missing():
    # The source tree has no built module: the fallback runs.
    if native.load() is None:
        assert rows.wal_tables([["cpu", segments()]]) == [{"table_name": "cpu", "rows": EXPECTED}]


def test_build_is_skipped_when_current_and_reports_a_missing_compiler(native_sdk, monkeypatch, tmp_path):
    ok, message = native.build(str(native_sdk / "weir_plugin"), extra_cflags=native.STRICT_CFLAGS)
    assert ok and message.endswith("is current")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    tmp_path = tmp_path / "venv"
    tmp_path.mkdir()
    real = native.sysconfig.get_config_var
    monkeypatch.setattr(
        native.sysconfig, "get_config_var", lambda name: "/nonexistent/cc" if name == "CC" else real(name)
    )
    ok, message = native.build(str(tmp_path))
    assert not ok and "/nonexistent/cc" in message
    assert os.listdir(tmp_path) == [], "no half-built files left behind"


def test_a_new_venv_copies_the_module_built_for_the_same_interpreter(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    ok, message = native.build(str(first))
    assert ok and message.startswith("built "), message
    ok, message = native.build(str(second))
    assert ok and message.startswith("copied "), message
    so = [p.name for p in first.iterdir() if p.suffix == ".so"]
    assert [p.name for p in second.iterdir() if p.suffix == ".so"] == so
    assert (first / so[0]).read_bytes() == (second / so[0]).read_bytes()
    ok, message = native.build(str(second))
    assert ok and message.endswith("is current")


def load_module(so):
    spec = importlib.util.spec_from_file_location("weir_plugin._native", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_module_builds_without_warnings_and_imports(monkeypatch, tmp_path):
    # An empty cache: the module is compiled here, not copied from an earlier build.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dest = tmp_path / "strict"
    dest.mkdir()
    ok, message = native.build(str(dest), extra_cflags=native.STRICT_CFLAGS)
    assert ok and message.startswith("built "), message
    (so,) = dest.glob("_native*.so")
    assert load_module(so).wal_rows(segments()) == EXPECTED
    # The extra flags do reach the compiler, and are part of what makes a module current.
    ok, message = native.build(str(dest), extra_cflags=[*native.STRICT_CFLAGS, "-fweir-no-such-flag"])
    assert not ok and "-fweir-no-such-flag" in message, message
    assert list(dest.glob("_native*.so")) == [], "no stale module left"


def test_no_speedups_on_a_free_threaded_python(monkeypatch, tmp_path):
    (tmp_path / "_native.cpython-313t-x86_64-linux-gnu.so").write_bytes(b"stale")
    real = native.sysconfig.get_config_var
    monkeypatch.setattr(
        native.sysconfig,
        "get_config_var",
        lambda name: {"Py_GIL_DISABLED": 1, "EXT_SUFFIX": ".cpython-313t-x86_64-linux-gnu.so"}.get(name, real(name)),
    )
    ok, message = native.build(str(tmp_path))
    assert not ok and "free-threaded" in message
    assert os.listdir(tmp_path) == [], "a module built earlier is removed"
    # Nor is one loaded: workers build rows in Python.
    monkeypatch.setitem(sys.modules, "weir_plugin._native", types.ModuleType("weir_plugin._native"))
    assert native.load() is None
    monkeypatch.setattr(native.sysconfig, "get_config_var", real)
    assert native.load() is sys.modules["weir_plugin._native"]


ARENAS = textwrap.dedent("""
    import importlib.util, resource, sys
    spec = importlib.util.spec_from_file_location("weir_plugin._native", sys.argv[1])
    c = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(c)
    c.keep_arenas(int(sys.argv[2]))
    def batch():
        return [{"a": i * 0.5, "b": i * 0.25, "t": 10**18 + i} for i in range(300_000)]
    x = batch(); del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = batch(); del x
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, c.arena_stats()["reused"])
    c.keep_arenas(0)
    assert c.arena_stats()["kept"] == 0
""")


def test_kept_arenas_spare_the_next_batch_its_page_faults(c_module):
    def faults(budget):
        out = subprocess.run(
            [sys.executable, "-c", ARENAS, c_module.__file__, str(budget)], capture_output=True, text=True, check=True
        )
        return [int(x) for x in out.stdout.split()]

    freed_faults, freed_reused = faults(0)
    kept_faults, kept_reused = faults(256 << 20)
    assert freed_reused == 0 and kept_reused > 0
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        # scripts/asan-native: ASan's allocator and shadow memory fault in pages of their own
        # (~7,000 here with the cache), so only the reuse above is checked.
        return
    # ~100 MB of dicts: ~25,000 pages faulted in again without the cache.
    assert freed_faults > 10_000, freed_faults
    assert kept_faults < freed_faults / 4, (kept_faults, freed_faults)
