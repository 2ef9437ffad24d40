"""Plugin loading and the influxdb3_local API, offline through the test harness."""

import textwrap
import time

import pytest

from weir_plugin.cache import ScopeCache
from weir_plugin.engine import MISSING_FUNCTION, LocalAPI
from weir_plugin.testing import PluginHarness


def plugin(tmp_path, source, name="p.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


BATCHES = [
    {"table_name": "cpu", "rows": [{"host": "a", "usage": 90.5, "time": 1}, {"host": "b", "usage": 10.0, "time": 2}]}
]


def test_process_writes_writes_back_and_logs(tmp_path):
    p = plugin(
        tmp_path,
        """
        def process_writes(influxdb3_local, table_batches, args):
            for batch in table_batches:
                for row in batch["rows"]:
                    if row["usage"] > float(args["threshold"]):
                        alert = LineBuilder("alerts").tag("host", row["host"])
                        influxdb3_local.write(alert.float64_field("usage", row["usage"]))
            influxdb3_local.info("checked", len(table_batches), "tables")
    """,
    )
    r = PluginHarness(p, database="sensors", args={"threshold": "50"}).wal(BATCHES)
    assert r["errors"] == []
    assert r["database_writes"] == {"sensors": ["alerts,host=a usage=90.5"]}
    assert r["log_lines"] == ["INFO: checked 1 tables"]


def test_args_none_without_arguments(tmp_path):
    p = plugin(
        tmp_path,
        """
        def process_writes(influxdb3_local, table_batches, args):
            influxdb3_local.info(repr(args))
    """,
    )
    assert PluginHarness(p).wal([])["log_lines"] == ["INFO: None"]


@pytest.mark.parametrize("entry", ["process_writes", "process_scheduled_call", "process_request"])
def test_missing_entry_points_give_the_exact_messages(tmp_path, entry):
    p = plugin(tmp_path, "x = 1\n")
    h = PluginHarness(p)
    r = {"process_writes": lambda: h.wal([]), "process_scheduled_call": h.schedule, "process_request": h.request}[
        entry
    ]()
    assert r["errors"] == [MISSING_FUNCTION[entry]]
    assert MISSING_FUNCTION["process_writes"] == (
        "the process_writes function is not present in the plugin. "
        "Should be defined as: process_writes(influxdb3_local, table_batches, args=None)"
    )


def test_exceptions_and_system_exit_discard_buffered_writes(tmp_path):
    p = plugin(
        tmp_path,
        """
        import sys
        def process_writes(influxdb3_local, table_batches, args):
            influxdb3_local.write(LineBuilder("m").int64_field("v", 1))
            if table_batches:
                sys.exit(3)
            raise ValueError("boom")
    """,
    )
    h = PluginHarness(p)
    r = h.wal([])
    assert r["errors"] == ["ValueError: boom"]
    assert r["database_writes"] == {}
    assert "Traceback" in r["traceback"] and "boom" in r["traceback"]
    r = h.wal(BATCHES)
    assert r["errors"] == ["SystemExit: 3"]


def test_single_file_runs_in_a_fresh_namespace_and_reloads(tmp_path):
    src = """
        from __future__ import annotations
        from dataclasses import dataclass
        VERSION = {version}
        counter = []
        @dataclass
        class Point:
            host: str
        def process_writes(influxdb3_local, table_batches, args):
            counter.append(1)
            influxdb3_local.info(VERSION, len(counter), __name__, Point("a").host)
    """
    p = plugin(tmp_path, src.replace("{version}", "1"))
    h = PluginHarness(p)
    assert h.wal([])["log_lines"] == ["INFO: 1 1 builtins a"]
    assert h.wal([])["log_lines"] == ["INFO: 1 1 builtins a"]  # module state does not persist
    # Edit: the next call runs the new code (size changes, so even a coarse mtime is enough).
    with open(p, "w") as f:
        f.write(textwrap.dedent(src.replace("{version}", "22")))
    assert h.wal([])["log_lines"] == ["INFO: 22 1 builtins a"]


def test_line_builder_is_a_builtin_before_the_module_body_runs(tmp_path):
    p = plugin(
        tmp_path,
        """
        LB = LineBuilder
        def make() -> LineBuilder:
            return LB("m")
        def process_writes(influxdb3_local, table_batches, args):
            influxdb3_local.write(make().int64_field("v", 1))
    """,
    )
    assert PluginHarness(p).wal([])["database_writes"] == {"db": ["m v=1i"]}


def test_multi_file_plugin_is_a_package_with_persistent_state_and_reloads(tmp_path):
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        from .helpers import double
        calls = []
        def process_writes(influxdb3_local, table_batches, args):
            calls.append(1)
            influxdb3_local.info(double(len(calls)), __name__)
    """)
    )
    h = PluginHarness(str(pkg))
    assert h.wal([])["log_lines"] == ["INFO: 2 my_pkg"]
    assert h.wal([])["log_lines"] == ["INFO: 4 my_pkg"]  # module state persists
    time.sleep(0.01)
    (pkg / "helpers.py").write_text("def double(x):\n    return 100 * x\n")
    assert h.wal([])["log_lines"] == ["INFO: 100 my_pkg"]  # reloaded: fresh state, new helper


def test_query_and_sync_writes_and_their_errors(tmp_path):
    p = plugin(
        tmp_path,
        """
        def process_scheduled_call(influxdb3_local, call_time, args):
            rows = influxdb3_local.query("SELECT 1", {"a": "b"})
            influxdb3_local.info(rows, call_time.tzinfo)
            influxdb3_local.write_sync_to_db("other", LineBuilder("m").int64_field("v", 1), True)
            influxdb3_local.query("SELECT broken")
    """,
    )
    r = PluginHarness(p, database="d", queries={"SELECT 1": [{"x": 1}]}).schedule()
    assert r["log_lines"] == ["INFO: [{'x': 1}] None"]
    assert r["database_writes"] == {"other": ["m v=1i"]}
    assert len(r["errors"]) == 1
    assert r["errors"][0].startswith("Exception: error: no canned answer")
    assert r["errors"][0].endswith("executing query on d: SELECT broken")


def test_local_api_has_exactly_the_influxdb_attributes():
    public = sorted(n for n in dir(LocalAPI) if not n.startswith("_"))
    assert public == sorted(
        ["info", "warn", "error", "query", "write", "write_to_db", "write_sync", "write_sync_to_db", "cache"]
    )


def test_cache_trigger_scope_ttl_and_global_scope(tmp_path):
    p = plugin(
        tmp_path,
        """
        def process_writes(influxdb3_local, table_batches, args):
            c = influxdb3_local.cache
            if not table_batches:
                c.put("obj", object())
                c.put("short", 1, ttl=0.05)
                c.put("g", "global", use_global=True)
                influxdb3_local.info(c.get("short"), c.get("g"), c.get("g", "none"))
            else:
                influxdb3_local.info(type(c.get("obj")).__name__, c.get("short", "expired"),
                                     c.delete("obj"), c.delete("obj"), c.get("g", use_global=True))
    """,
    )
    h = PluginHarness(p)
    assert h.wal([])["log_lines"] == ["INFO: 1 None none"]
    time.sleep(0.06)
    assert h.wal(BATCHES)["log_lines"] == ["INFO: object expired True False global"]


def test_scope_cache_with_a_fake_clock():
    now = [0.0]
    c = ScopeCache(clock=lambda: now[0])
    c.put("k", "v", ttl=10)
    now[0] = 9.99
    assert c.get("k") == "v"
    now[0] = 10.0
    assert c.get("k", "gone") == "gone"
    c.put("k", "v", ttl=1)
    now[0] = 12.0
    assert c.delete("k") is False  # expired keys read as missing


def test_args_are_a_fresh_copy_and_empty_args_stay_empty(tmp_path):
    p = plugin(
        tmp_path,
        """
        def process_writes(influxdb3_local, table_batches, args):
            influxdb3_local.info(repr(args))
            if args is not None:
                args["added"] = "x"
    """,
    )
    h = PluginHarness(p, args={"k": "v"})
    assert h.wal([])["log_lines"] == ["INFO: {'k': 'v'}"]
    assert h.wal([])["log_lines"] == ["INFO: {'k': 'v'}"]  # the mutation did not stick
    assert PluginHarness(p, args={}).wal([])["log_lines"] == ["INFO: {}"]


@pytest.mark.parametrize("ttl", [-1, float("nan"), float("inf")])
def test_bad_cache_ttls_raise_in_the_plugin(tmp_path, ttl):
    p = plugin(
        tmp_path,
        f"""
        def process_writes(influxdb3_local, table_batches, args):
            influxdb3_local.cache.put("k", 1, ttl=float("{ttl}"))
    """,
    )
    r = PluginHarness(p).wal([])
    assert r["errors"] and r["errors"][0].startswith("ValueError: cache ttl must be a finite")


def test_a_plugin_swapped_for_a_symlink_out_of_the_plugin_dir_is_refused(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (tmp_path / "outside.py").write_text(
        "def process_writes(influxdb3_local, table_batches, args):\n    influxdb3_local.info('outside')\n"
    )
    plugin = plugins / "p.py"
    plugin.write_text("def process_writes(influxdb3_local, table_batches, args):\n    influxdb3_local.info('inside')\n")
    monkeypatch.setenv("PLUGIN_DIR", str(plugins))
    h = PluginHarness(str(plugin))
    assert h.wal([])["log_lines"] == ["INFO: inside"]
    plugin.unlink()
    plugin.symlink_to(tmp_path / "outside.py")
    r = h.wal([])
    assert r["log_lines"] == []
    assert r["errors"][0].startswith("Path traversal detected: "), r


def test_a_package_with_a_symlink_out_of_the_plugin_dir_is_refused(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    pkg = plugins / "pkgx"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("def process_writes(influxdb3_local, table_batches, args):\n    pass\n")
    (tmp_path / "evil.py").write_text("")
    (pkg / "helper.py").symlink_to(tmp_path / "evil.py")
    monkeypatch.setenv("PLUGIN_DIR", str(plugins))
    r = PluginHarness(str(pkg)).wal([])
    assert r["errors"][0].startswith("Path traversal detected: "), r
