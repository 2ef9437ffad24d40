"""The fork server over its real control channel, with this test playing the plugin host."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys

from weir_plugin.forkserver import describe

SDK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wait_statuses_read_like_rust_exit_statuses():
    assert describe(3 << 8) == "exit status: 3"
    assert describe(0) == "exit status: 0"
    assert describe(signal.SIGKILL) == "signal: 9 (SIGKILL)"
    assert describe(signal.SIGSEGV | 0x80) == "signal: 11 (SIGSEGV) (core dumped)"


def send_frame(sock, header):
    h = json.dumps(header).encode()
    sock.sendall(struct.pack("<II", 4 + len(h), len(h)) + h)


def read_frame(sock):
    sock.settimeout(30)
    buf = b""
    while len(buf) < 4:
        buf += sock.recv(4 - len(buf))
    (n,) = struct.unpack("<I", buf)
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data))
    (h,) = struct.unpack("<I", data[:4])
    return json.loads(data[4 : 4 + h])


def recv(ctl):
    ctl.settimeout(30)
    return json.loads(ctl.recv(65536))


def test_spawn_report_exit_and_retire(tmp_path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ, WEIR_FORK_FD=str(theirs.fileno()), PYTHONPATH=SDK, WEIR_WORKER_PRELOAD="json,no_such_module")
    proc = subprocess.Popen(
        [sys.executable, "-m", "weir_plugin.forkserver"], pass_fds=[theirs.fileno()], env=env, cwd=tmp_path
    )
    theirs.close()
    try:
        ready = recv(ours)
        assert ready["ready"] and ready["preloaded"] == ["json"], ready
        assert "no_such_module" in ready["failed"], ready

        channel, worker_end = socket.socketpair()
        _out_r, out_w = os.pipe()
        _err_r, err_w = os.pipe()
        socket.send_fds(
            ours, [json.dumps({"spawn": 7, "memory_limit": None}).encode()], [worker_end.fileno(), out_w, err_w]
        )
        for fd in (out_w, err_w):
            os.close(fd)
        worker_end.close()
        spawned = recv(ours)
        assert spawned["spawned"] == 7 and spawned["pid"] > 0, spawned
        pid = spawned["pid"]
        # Its own process group, a child of the fork server.
        assert os.getpgid(pid) == pid
        with open(f"/proc/{pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == proc.pid
        # It is a worker: it answers `init` with `ready`, and `shutdown` ends it cleanly.
        plugin = tmp_path / "p.py"
        plugin.write_text("def process_writes(influxdb3_local, table_batches, args):\n    pass\n")
        init = {"type": "init", "trigger": "t", "database": "db", "plugin_path": str(plugin), "args": None}
        send_frame(channel, init)
        assert read_frame(channel)["type"] == "ready"
        send_frame(channel, {"type": "shutdown"})
        exited = recv(ours)
        assert exited == {"exited": pid, "status": "exit status: 0"}, exited

        # Retired with no workers left: it exits.
        ours.send(json.dumps({"retire": True}).encode())
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        ours.close()
