"""The worker process over its real IPC channel, with this test playing the plugin host."""

import marshal
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from weir_plugin.worker import Channel, ChannelClosed, arena_cache_enabled

SDK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Host:
    def __init__(self, tmp_path, source, run_async=False, args=None, columns=False, sdk=SDK, init=None, env=None):
        path = tmp_path / "plugin.py"
        path.write_text(textwrap.dedent(source))
        ours, theirs = socket.socketpair()
        env = dict(os.environ, **(env or {}), WEIR_IPC_FD=str(theirs.fileno()), PYTHONPATH=str(sdk), TZ="UTC")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weir_plugin.worker"],
            # `-m` puts the working directory first on sys.path: not the SDK source tree.
            pass_fds=[theirs.fileno()],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        theirs.close()
        ours.settimeout(30)
        self.ch = Channel(ours)
        self.ch.send(
            {
                "type": "init",
                "trigger": "t1",
                "database": "db",
                "plugin_path": str(path),
                "args": args,
                "run_async": run_async,
                "threads": 4,
                "columns": columns,
                **(init or {}),
            }
        )
        header, _ = self.ch.recv()
        assert header["type"] == "ready" and header["pid"] == self.proc.pid
        self.ready = header
        self.logs = []

    def invoke(self, rid, entry, *args):
        self.ch.send({"type": "invoke", "id": rid, "entry": entry}, marshal.dumps(list(args)))

    def until_done(self, answer=None):
        """Collect messages until a `done`; `answer(header, body)` replies to requests."""
        while True:
            header, body = self.ch.recv()
            if header["type"] == "log":
                self.logs.append((header["level"], header["text"]))
            elif header["type"] == "done":
                return header
            else:
                answer(header, body)

    def close(self):
        try:
            self.ch.send({"type": "shutdown"})
        except OSError:
            pass
        self.proc.wait(timeout=30)


def test_wal_invocation_with_query_print_and_writes(tmp_path):
    h = Host(
        tmp_path,
        """
        def process_writes(influxdb3_local, table_batches, args):
            print("hello from print")
            rows = influxdb3_local.query("SELECT n FROM t WHERE h = $h", {"h": 5})
            for batch in table_batches:
                influxdb3_local.write(LineBuilder("out").int64_field("n", len(batch["rows"]) + rows[0]["n"]))
            influxdb3_local.warn("args", args)
    """,
        args={"k": "v"},
    )

    def answer(header, body):
        assert header["type"] == "query" and header["params"] == {"h": "5"} and header["database"] == "db"
        h.ch.send({"type": "query_result", "id": header["id"], "error": None}, marshal.dumps([{"n": 40}]))

    h.invoke(1, "process_writes", [{"table_name": "cpu", "rows": [{"a": 1}, {"a": 2}]}])
    done = h.until_done(answer)
    assert done == {
        "type": "done",
        "id": 1,
        "ok": True,
        "error": None,
        "traceback": None,
        "writes": {"db": ["out n=42i"]},
    }
    assert ("INFO", "hello from print") in h.logs
    assert ("WARN", "args {'k': 'v'}") in h.logs
    h.close()
    assert h.proc.returncode == 0


def test_errors_system_exit_and_query_failures_keep_the_worker_alive(tmp_path):
    h = Host(
        tmp_path,
        """
        import sys
        def process_scheduled_call(influxdb3_local, call_time, args):
            if call_time.year == 1970:
                sys.exit(1)
            influxdb3_local.info(call_time.isoformat(), call_time.tzinfo)
            influxdb3_local.query("SELECT nope")
    """,
    )
    h.invoke(1, "process_scheduled_call", 5)
    done = h.until_done()
    assert done["ok"] is False and done["error"] == "SystemExit: 1"

    def answer(header, body):
        h.ch.send({"type": "query_result", "id": header["id"], "error": "column nope not found"})

    h.invoke(2, "process_scheduled_call", 1_700_000_000)
    done = h.until_done(answer)
    assert done["ok"] is False
    assert done["error"] == "Exception: error: column nope not found executing query on db: SELECT nope"
    assert ("INFO", "2023-11-14T22:13:20 None") in h.logs
    h.close()


def test_sync_trigger_runs_in_order_async_overlaps(tmp_path):
    src = """
        import time
        def process_writes(influxdb3_local, table_batches, args):
            time.sleep(table_batches[0])
    """
    for run_async, expect_overlap in [(False, False), (True, True)]:
        h = Host(tmp_path, src, run_async=run_async)
        started = time.monotonic()
        h.invoke(1, "process_writes", [0.5])
        h.invoke(2, "process_writes", [0.0])
        order = [h.until_done()["id"], h.until_done()["id"]]
        elapsed = time.monotonic() - started
        if expect_overlap:
            assert order == [2, 1], "the short async call finishes first"
        else:
            assert order == [1, 2], "a sync trigger keeps arrival order"
            assert elapsed >= 0.5
        h.close()


def test_staged_arguments_run_with_the_call_that_names_them(tmp_path):
    h = Host(
        tmp_path,
        """
        import time
        def process_writes(influxdb3_local, table_batches, args):
            time.sleep(0.2)
            influxdb3_local.info("rows", [r["n"] for t in table_batches for r in t["rows"]])
    """,
    )
    # The next call's rows arrive while the first runs; its invoke carries no body.
    h.invoke(1, "process_writes", [{"table_name": "t", "rows": [{"n": 1}]}])
    h.ch.send({"type": "stage", "id": 7}, marshal.dumps([[{"table_name": "t", "rows": [{"n": 2}, {"n": 3}]}]]))
    h.ch.send({"type": "invoke", "id": 8, "entry": "process_writes", "staged": 7})
    assert h.until_done()["id"] == 1
    assert h.until_done() == {"type": "done", "id": 8, "ok": True, "error": None, "traceback": None, "writes": {}}
    assert h.logs[-2:] == [("INFO", "rows [1]"), ("INFO", "rows [2, 3]")]
    # A stage is used once, and only by the call naming it: otherwise the call is not run
    # and the host is asked for the arguments again.
    for staged in (7, 9):
        h.ch.send({"type": "invoke", "id": 10, "entry": "process_writes", "staged": staged})
        assert h.until_done() == {
            "type": "done",
            "id": 10,
            "ok": False,
            "unstaged": True,
            "writes": {},
            "error": "staged arguments missing",
        }
    assert h.logs[-1] == ("INFO", "rows [2, 3]"), "nothing ran"
    h.close()


@pytest.mark.parametrize("speedups", [False, True])
def test_rows_sent_as_columns_reach_the_plugin_as_dicts(tmp_path, native_sdk, speedups):
    h = Host(
        tmp_path,
        """
        def process_writes(influxdb3_local, table_batches, args):
            influxdb3_local.info(repr(table_batches))
    """,
        columns=True,
        sdk=native_sdk if speedups else SDK,
    )
    assert h.ready["native"] is speedups
    tables = [
        [
            "cpu",
            [
                [
                    2,
                    [
                        ["host", 4, None, struct.pack("<2I", 1, 0), ["a", "b"]],
                        ["usage", 0, b"\1\0", struct.pack("<2d", 0.5, 0.0), None],
                        ["time", 1, None, struct.pack("<2q", 1, 2), None],
                    ],
                ]
            ],
        ],
        ["mem", []],
    ]
    expected = repr(
        [
            {"table_name": "cpu", "rows": [{"host": "b", "usage": 0.5, "time": 1}, {"host": "a", "time": 2}]},
            {"table_name": "mem", "rows": []},
        ]
    )
    h.ch.send({"type": "invoke", "id": 1, "entry": "process_writes"}, marshal.dumps([tables]))
    assert h.until_done()["ok"]
    # Staged arguments are columns too.
    h.ch.send({"type": "stage", "id": 5}, marshal.dumps([tables]))
    h.ch.send({"type": "invoke", "id": 2, "entry": "process_writes", "staged": 5})
    assert h.until_done()["ok"]
    assert h.logs == [("INFO", expected), ("INFO", expected)]
    h.close()


def test_a_worker_that_dies_closes_the_channel(tmp_path):
    h = Host(
        tmp_path,
        """
        import os
        def process_writes(influxdb3_local, table_batches, args):
            os._exit(17)
    """,
    )
    h.invoke(1, "process_writes", [])
    with pytest.raises(ChannelClosed):
        h.until_done()
    assert h.proc.wait(timeout=30) == 17


def test_global_cache_goes_to_the_host(tmp_path):
    import pickle

    h = Host(
        tmp_path,
        """
        def process_writes(influxdb3_local, table_batches, args):
            influxdb3_local.cache.put("k", {"x": 1}, ttl=5, use_global=True)
            influxdb3_local.info(influxdb3_local.cache.get("k", use_global=True))
    """,
    )
    store = {}

    def answer(header, body):
        assert header["type"] == "cache"
        if header["op"] == "put":
            store[header["key"]] = body
            assert header["ttl"] == 5
            h.ch.send({"type": "cache_result", "id": header["id"]})
        else:
            found = header["key"] in store
            h.ch.send({"type": "cache_result", "id": header["id"], "found": found}, store.get(header["key"], b""))

    h.invoke(1, "process_writes", [])
    assert h.until_done(answer)["ok"] is True
    assert pickle.loads(store["k"]) == {"x": 1}
    assert ("INFO", "{'x': 1}") in h.logs
    h.close()


ARENAS = """
    def process_writes(influxdb3_local, table_batches, args):
        from weir_plugin import _native
        influxdb3_local.info(len(table_batches[0]["rows"]), _native.arena_stats()["budget"] > 0)
"""


@pytest.mark.parametrize(
    "init, env, kept",
    [
        ({}, {}, True),
        ({"arena_cache": False}, {}, False),
        ({}, {"WEIR_WORKER_ARENA_CACHE": "0"}, False),
        # The host's setting wins over the variable it passed on.
        ({"arena_cache": True}, {"WEIR_WORKER_ARENA_CACHE": "off"}, True),
    ],
)
def test_the_arena_cache_has_its_own_switch(tmp_path, native_sdk, init, env, kept):
    env = dict(env)
    env.setdefault("WEIR_WORKER_ARENA_CACHE", "")
    h = Host(tmp_path, ARENAS, columns=True, sdk=native_sdk, init=init, env=env)
    # The row builder is on either way.
    assert h.ready["native"] is True and h.ready["arena_cache"] is kept
    h.invoke(1, "process_writes", [["cpu", [[2, [["time", 1, None, struct.pack("<2q", 1, 2), None]]]]]])
    assert h.until_done()["ok"]
    assert h.logs == [("INFO", f"2 {kept}")]
    h.close()


def test_arena_cache_setting():
    assert arena_cache_enabled(None, {}) is True
    for off in ("0", "false", "No", " OFF "):
        assert arena_cache_enabled(None, {"WEIR_WORKER_ARENA_CACHE": off}) is False
    for on in ("", "1", "true", "yes"):
        assert arena_cache_enabled(None, {"WEIR_WORKER_ARENA_CACHE": on}) is True
    assert arena_cache_enabled(False, {}) is False
    assert arena_cache_enabled(True, {"WEIR_WORKER_ARENA_CACHE": "0"}) is True
