"""The README's shell blocks, pasted in order against a fresh server, must work.

Every ```sh block of README.md runs, in order, in one bash (`set -euo pipefail`, so a
failing command fails the test; curl gets --fail-with-body, so an HTTP error does too),
in a directory laid out as scripts/run leaves a checkout: the server's data in
.weir/data, its plugins in .weir/plugins, the binaries in .weir/bin. The only edits: the
server's real address for 127.0.0.1:8181 and the real token for `apiv3_...`. A block
preceded by `<!-- readme-test: skip (why) -->` is left out (it builds, or needs Docker).
"""

import os
import pathlib
import re
import secrets
import signal
import socket
import subprocess
import time

import requests

from conftest import ROOT, weir_binary

FENCE = re.compile(r"^```(\w*)\s*$")


def readme_blocks() -> list[tuple[int, str]]:
    """(line number, text) of each ```sh block that is not marked to skip."""
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = "\n".join(lines[max(0, start - 2) : start])
        if lang == "sh" and "readme-test: skip" not in before:
            blocks.append((start + 1, "\n".join(lines[start + 1 : end])))
        i = end + 1
    return blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_shell_blocks_work_as_pasted(tmp_path: pathlib.Path) -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 4, f"found only {len(blocks)} shell blocks in README.md"
    bin_dir = tmp_path / ".weir" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("weir", "weir-plugin-host"):
        (bin_dir / name).symlink_to(weir_binary().parent / name)
    token = "apiv3_" + secrets.token_hex(16)
    address = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(bin_dir / "weir"), "serve", "--http-bind", address, "--admin-token", token],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://{address}/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server was not ready within 120 s"
            time.sleep(0.2)

        script = ["set -euo pipefail", 'curl() { command curl --fail-with-body "$@"; }']
        for line_no, text in blocks:
            text = text.replace("127.0.0.1:8181", address)
            text = re.sub(r"TOKEN=apiv3_\.\.\.", f"TOKEN={token}", text)
            script.append(f"echo '>>> README.md block at line {line_no}' >&2")
            script.append(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WEIR_", "INFLUXDB3_"))}
        env["WEIR_HOST"] = f"http://{address}"
        run = subprocess.run(
            ["bash", "-x", "-c", "\n".join(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        detail = f"exit {run.returncode}\n--- stdout\n{run.stdout}\n--- stderr (bash -x)\n{run.stderr[-8000:]}"
        assert run.returncode == 0, detail
        out = run.stdout
        # What each step promises: rows written and read back, the plugin's output table,
        # its log line, the request endpoint's answer and the dry runs.
        for want in ["kitchen", "bath", "attic", "checked", '"status": "ok"', "trigger_time", "database_writes"]:
            assert want in out, f"{want!r} missing from the README run's output\n{detail}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
