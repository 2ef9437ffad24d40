"""The two-container deployment (deploy/docker-compose.yml), run for real.

Builds the images from the binaries in $WEIR_BIN_DIR on the local base image
(deploy/build-images --local-base), brings up a compose project of its own (unique project
name, a free loopback port) and drives it only through the published port and the Docker
CLI. The tests run in file order and build on each other's state: writes, three triggers
with uploaded plugins and an installed package first, then the faults (a killed plugin
host, a cut network, a restarted database, a wrong token, down and up).

scripts/test runs this module when a Docker Engine is reachable and prints one line
saying it skipped it otherwise.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PACKAGE = "six==1.16.0"

COUNTER = """
def process_writes(influxdb3_local, table_batches, args=None):
    # One `seen` point per written row, at the row's own time: a batch delivered twice
    # overwrites its points, so count(*) FROM seen is the number of distinct rows seen.
    n = 0
    for batch in table_batches:
        if batch["table_name"] != "events":
            continue
        for row in batch["rows"]:
            influxdb3_local.write(LineBuilder("seen").int64_field("seq", row["seq"]).time_ns(row["time"]))
            n += 1
    # One `calls` point per call (a fresh timestamp each): how often the plugin ran.
    influxdb3_local.write(LineBuilder("calls").int64_field("rows", n))
"""

TICKS = """
def process_scheduled_call(influxdb3_local, call_time, args=None):
    influxdb3_local.write(LineBuilder("ticks").int64_field("n", 1))
"""

PROBE = """
import os

def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
    import six  # installed with install_packages
    answer = {"six": six.__version__, "hostname": os.uname().nodename}
    # The database's data directory, seen from inside the plugin host's container.
    for path in ("/var/lib/weir/data", "/var/lib/weir/data/catalog.json"):
        try:
            answer[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read(64)
        except OSError as e:
            answer[path] = type(e).__name__
    answer["events"] = influxdb3_local.query("SELECT count(*) AS n FROM events")[0]["n"]
    return answer
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def poll(what: str, check: Any, deadline_s: float = 180, every_s: float = 0.5) -> Any:
    """Call check() until it returns something truthy; fail with its last value or error."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - kept as the last state for the failure message
            last = e
        time.sleep(every_s)
    raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}; last: {last!r}")


class Deployment:
    def __init__(self, workdir: pathlib.Path):
        self.project = f"weirtest{os.getpid()}"
        self.port = free_port()
        self.token = "apiv3_" + secrets.token_hex(24)
        self.host_token = secrets.token_hex(24)
        env = workdir / "compose.env"
        env.write_text(
            "\n".join(
                [
                    f"WEIR_ADMIN_TOKEN={self.token}",
                    f"WEIR_PLUGIN_HOST_TOKEN={self.host_token}",
                    f"WEIR_PUBLISH=127.0.0.1:{self.port}",
                    "WEIR_LOG_FILTER=info",
                ]
            )
            + "\n"
        )
        self.compose = [
            "docker-compose",
            "--project-name",
            self.project,
            "--file",
            str(DEPLOY / "docker-compose.yml"),
            "--env-file",
            str(env),
        ]
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        self.seq = 0

    # -- compose and containers ---------------------------------------------------------
    def dc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*self.compose, *args, check=check)

    def container(self, service: str) -> str:
        cid = self.dc("ps", "-q", service).stdout.strip()
        assert cid, f"no container for {service}"
        return cid

    def inspect(self, service: str) -> dict[str, Any]:
        out = run("docker", "inspect", self.container(service)).stdout
        return json.loads(out)[0]  # type: ignore[no-any-return]

    def logs(self, service: str) -> str:
        p = self.dc("logs", "--no-color", service, check=False)
        return p.stdout + p.stderr

    @property
    def network(self) -> str:
        return f"{self.project}_weir"

    # -- the database, through the published port -------------------------------------
    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/ready", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, deadline_s: float = 240) -> None:
        poll("GET /ready to answer 200 (plugin host connected)", self.ready, deadline_s)

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        r = self.http.post(f"{self.url}{path}", json=body, timeout=300)
        assert r.status_code < 300, f"POST {path}: {r.status_code} {r.text}"
        return r

    def sql(self, q: str, db: str = "app") -> list[dict[str, Any]]:
        r = self.http.get(f"{self.url}/api/v3/query_sql", params={"db": db, "q": q, "format": "json"}, timeout=60)
        assert r.status_code == 200, f"{q}: {r.status_code} {r.text}"
        return r.json()  # type: ignore[no-any-return]

    def count(self, table: str) -> int:
        try:
            return int(self.sql(f"SELECT count(*) AS n FROM {table}")[0]["n"])
        except AssertionError as e:
            if "not found" in str(e):
                return 0
            raise

    def write_events(self, lines: int = 20) -> None:
        """One write of `lines` rows of table events, each with the next `seq`."""
        body = []
        for _ in range(lines):
            self.seq += 1
            body.append(f"events,src=test seq={self.seq}i {self.seq}")
        r = self.http.post(
            f"{self.url}/api/v3/write_lp", params={"db": "app", "precision": "nanosecond"}, data="\n".join(body), timeout=60
        )
        assert r.status_code == 204, f"write: {r.status_code} {r.text}"

    def wait_all_seen(self, deadline_s: float = 240) -> None:
        poll(f"all {self.seq} rows to reach the counter plugin", lambda: self.count("seen") == self.seq or None, deadline_s)
        assert self.count("seen") == self.seq

    def trigger_lag(self) -> int:
        rows = self.sql("SELECT trigger_name, lag FROM system.processing_engine_triggers")
        return int(next(r["lag"] for r in rows if r["trigger_name"] == "counter"))


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    bin_dir = os.environ.get("WEIR_BIN_DIR")
    assert bin_dir, "WEIR_BIN_DIR must name the directory with the built weir binaries (scripts/test sets it)"
    # The images, from the binaries under test, on the locally made base image.
    run(str(DEPLOY / "build-images"), "--local-base", timeout=1800)
    dep = Deployment(tmp_path_factory.mktemp("compose"))
    dep.dc("up", "-d")
    try:
        dep.wait_ready()
        yield dep
    finally:
        for service in ("weir", "plugin-host"):
            print(f"\n===== docker-compose logs {service} (last 60 lines) =====")
            print("\n".join(dep.logs(service).splitlines()[-60:]))
        dep.dc("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
        run("docker", "rm", "-f", f"{dep.project}-wrong-token", check=False)


def test_layout_shares_nothing(d: Deployment) -> None:
    db, host = d.inspect("weir"), d.inspect("plugin-host")
    db_vols = {m["Name"] for m in db["Mounts"] if m["Type"] == "volume"}
    host_vols = {m["Name"] for m in host["Mounts"] if m["Type"] == "volume"}
    assert db_vols == {f"{d.project}_weir-data"}, db["Mounts"]
    assert host_vols == {f"{d.project}_weir-plugins"}, host["Mounts"]
    assert not any(m["Type"] == "bind" for m in db["Mounts"] + host["Mounts"])
    # Only the database publishes a port; both run as the unprivileged user.
    assert db["HostConfig"]["PortBindings"], "the database's port is not published"
    assert not host["HostConfig"]["PortBindings"], host["HostConfig"]["PortBindings"]
    assert db["Config"]["User"].startswith("weir") and host["Config"]["User"].startswith("weir")
    assert requests.get(f"{d.url}/health", timeout=5).status_code == 200
    # Nothing answers on the plugin host's port from outside its network.
    host_ip = host["NetworkSettings"]["Networks"][d.network]["IPAddress"]
    assert host_ip and not d.inspect("plugin-host")["NetworkSettings"]["Ports"].get("8282/tcp")


def test_writes_plugins_package_and_outputs(d: Deployment) -> None:
    d.post("/api/v3/configure/database", {"db": "app"})
    d.post("/api/v3/configure/plugin_environment/install_packages", {"packages": [PACKAGE]})
    for name, content in (("counter.py", COUNTER), ("ticks.py", TICKS), ("probe.py", PROBE)):
        d.post("/api/v3/plugins/files", {"plugin_name": name, "content": content})
    for name, spec in (("counter", "table:events"), ("ticks", "every:1s"), ("probe", "request:probe")):
        d.post(
            "/api/v3/configure/processing_engine_trigger",
            {
                "db": "app",
                "plugin_filename": f"{name}.py",
                "trigger_name": name,
                "trigger_specification": spec,
                "trigger_settings": {"run_async": False, "error_behavior": "retry" if name == "counter" else "log"},
            },
        )
    d.write_events()
    d.wait_all_seen()
    poll("the schedule trigger to write ticks", lambda: d.count("ticks") >= 2)

    r = d.http.get(f"{d.url}/api/v3/engine/probe", timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["six"] == "1.16.0"
    assert answer["events"] == d.seq
    # The plugin runs in the plugin host's container: the database's files are not there.
    assert answer["hostname"] != d.inspect("weir")["Config"]["Hostname"]
    assert answer["/var/lib/weir/data"] == "FileNotFoundError", answer
    assert answer["/var/lib/weir/data/catalog.json"] == "FileNotFoundError", answer


def children_of(pid: int) -> list[int]:
    """Host pids whose parent is `pid` (from /proc; the test runs on the Docker host)."""
    out = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def test_killed_plugin_host_is_restarted_and_delivery_resumes(d: Deployment) -> None:
    """The plugin host process dies with SIGKILL (a crash, an OOM kill) while batches are
    in flight: its container exits, Docker's restart policy starts it again, and every
    batch reaches the plugin. (`docker kill` itself counts as a manual stop, after which
    Docker applies no restart policy, so the test kills the process, as a crash would.)"""
    state = d.inspect("plugin-host")["State"]
    started = state["StartedAt"]
    # PID 1 of the container is tini; its child is weir-plugin-host.
    host_pids = children_of(int(state["Pid"]))
    assert host_pids, "no weir-plugin-host process under the container's tini"
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(60):
                d.write_events()
                time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.5)
    for pid in host_pids:
        os.kill(pid, signal.SIGKILL)
    t.join()
    assert not errors, errors
    poll(
        "compose to restart the killed plugin host",
        lambda: (s := d.inspect("plugin-host")["State"])["Running"] and s["StartedAt"] != started,
    )
    d.wait_ready()
    d.wait_all_seen()


def test_network_cut_keeps_writes_shows_lag_and_catches_up(d: Deployment) -> None:
    host = d.container("plugin-host")
    run("docker", "network", "disconnect", d.network, host)
    try:
        cut = time.monotonic()
        while time.monotonic() - cut < 15:
            d.write_events()  # acknowledged while the plugin host is unreachable
            time.sleep(0.2)
        lag = poll("lag in system.processing_engine_triggers", lambda: d.trigger_lag() or None, 60)
        assert lag > 0
        assert d.count("seen") < d.seq
    finally:
        run("docker", "network", "connect", "--alias", "plugin-host", d.network, host)
    d.wait_ready()
    d.wait_all_seen()
    poll("lag back to 0", lambda: d.trigger_lag() == 0, 60)


def test_database_restart_keeps_data_triggers_and_checkpoints(d: Deployment) -> None:
    d.wait_all_seen()
    poll("the last calls to land", lambda: d.trigger_lag() == 0)
    calls_before = d.count("calls")
    d.dc("restart", "--timeout", "30", "weir")
    d.wait_ready()
    assert d.count("events") == d.seq
    names = {r["trigger_name"] for r in d.sql("SELECT trigger_name FROM system.processing_engine_triggers")}
    assert {"counter", "ticks", "probe"} <= names
    # The checkpoint survived: at most the call in flight at the restart runs again, not
    # every retained WAL file.
    time.sleep(3)
    assert d.count("calls") <= calls_before + 2, (calls_before, d.count("calls"))
    d.write_events()
    d.wait_all_seen()


def test_wrong_token_is_refused_clearly_on_both_sides(d: Deployment) -> None:
    d.dc("stop", "--timeout", "20", "plugin-host")
    impostor = f"{d.project}-wrong-token"
    try:
        run(
            "docker",
            "run",
            "-d",
            "--name",
            impostor,
            "--network",
            d.network,
            "--network-alias",
            "plugin-host",
            "-e",
            "WEIR_PLUGIN_HOST_TOKEN=not-the-token",
            f"weir-plugin-host:{os.environ.get('WEIR_IMAGE_TAG', 'latest')}",
        )
        poll(
            "the database to log the refused token",
            lambda: "the plugin host refused the session token" in d.logs("weir"),
        )
        poll(
            "the plugin host to log the refused session",
            lambda: "refused a session with a missing or wrong token"
            in (lambda p: p.stdout + p.stderr)(run("docker", "logs", impostor, check=False)),
        )
        assert not d.ready()
    finally:
        run("docker", "rm", "-f", impostor, check=False)
    d.dc("start", "plugin-host")
    d.wait_ready()


def test_down_and_up_keeps_packages_data_and_triggers(d: Deployment) -> None:
    d.dc("down", "--timeout", "30")
    d.dc("up", "-d")
    d.wait_ready()
    r = d.http.get(f"{d.url}/api/v3/engine/probe", timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["six"] == "1.16.0"
    assert d.count("events") == d.seq
    d.write_events()
    d.wait_all_seen()
