"""Fixtures for the client-compatibility suite: a real `weir serve` per test module.

The server binary comes from $WEIR_BIN_DIR (set by scripts/test) or target/debug.
"""

import os
import pathlib
import re
import secrets
import signal
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def weir_binary() -> pathlib.Path:
    bin_dir = os.environ.get("WEIR_BIN_DIR")
    candidates = [pathlib.Path(bin_dir)] if bin_dir else []
    candidates.append(ROOT / "target" / "debug")
    for d in candidates:
        exe = d / "weir"
        if exe.exists():
            return exe
    raise RuntimeError(f"weir binary not found in {candidates}; run `cargo build --bins` first")


class Weir:
    """A running `weir serve` with auth on and a known admin token."""

    def __init__(self, data_dir: pathlib.Path):
        self.token = "apiv3_" + secrets.token_hex(16)
        self.log_lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                str(weir_binary()),
                "serve",
                "--http-bind", "127.0.0.1:0",
                "--object-store", "file",
                "--data-dir", str(data_dir),
                "--admin-token", self.token,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.address = self._wait_for_address(deadline=time.monotonic() + 60)
        self.url = f"http://{self.address}"
        self.host, port = self.address.rsplit(":", 1)
        self.port = int(port)
        self.grpc_uri = f"grpc://{self.address}"
        # Keep draining output so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_for_address(self, deadline: float) -> str:
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError("weir serve exited early:\n" + "".join(self.log_lines))
                continue
            self.log_lines.append(line)
            m = re.search(r"Weir listening on http://(\S+)", line)
            if m:
                return m.group(1)
        raise RuntimeError("weir serve did not report its address:\n" + "".join(self.log_lines))

    def _drain(self):
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log_lines.append(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def weir(tmp_path_factory):
    server = Weir(tmp_path_factory.mktemp("weir-data"))
    yield server
    server.stop()

