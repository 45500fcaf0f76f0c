"""scripts/cluster.sh: hosts in network namespaces (PostgreSQL, Redis, two API replicas, two workers, HAProxy), all
driven through the load balancer's URL as a client would; then `down` leaves nothing behind. docker-compose.yml runs
the same layout from the same files.

The cluster needs root and `ip netns` (skipped without them); its hosts run the tiny model: about a minute.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.config import Settings
from bench.cluster_hosts import free_port, namespaces_unavailable
from tests.api.helpers import FAST, toy_examples
from tests.tiny_model import build_tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "cluster.sh"
UP_TIMEOUT = 300.0  # four processes importing torch at once on a busy 2-core runner
REPLICA = "x-promptbank-replica"  # the header naming the API host that answered
ROLES = {"api": ROOT / "deploy" / "api.env", "worker": ROOT / "deploy" / "worker.env"}  # shared with docker-compose


def role_settings(role: str) -> dict[str, str]:
    lines = [line for line in ROLES[role].read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


@dataclass
class Cluster:
    name: str
    state: Path
    env: dict[str, str]
    url: str
    client: httpx.Client

    def script(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), command], env=self.env, capture_output=True, text=True, timeout=UP_TIMEOUT
        )

    def namespaces(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        return [line.split()[0] for line in listed.splitlines() if line.startswith(f"{self.name}-")]

    def query(self, sql: str) -> str:
        """One value from the cluster's database, through its socket in the state directory."""
        command = ["psql", "-h", str(self.state / "db" / "run"), "-U", "promptbank", "-d", "promptbank", "-Atc", sql]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    def balancer_stats(self) -> list[dict[str, str]]:
        """HAProxy's `show stat` through its runtime socket: one dict per frontend, backend and server."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.state / "lb" / "haproxy.sock"))
            sock.sendall(b"show stat\n")
            text = sock.makefile().read()
        header, *rows = [line for line in text.splitlines() if line]
        fields = header.lstrip("# ").split(",")
        return [dict(zip(fields, row.split(","), strict=False)) for row in rows]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    model = build_tiny_model_dir(tmp_path_factory.mktemp("cluster-model"))
    # PostgreSQL runs as the postgres user: its state must sit where that user can reach, not in pytest's 0700 tmp
    parent = Path(tempfile.mkdtemp(prefix="promptbank-cluster-test-"))
    parent.chmod(0o755)
    name = f"pbt{os.getpid() % 100000}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROMPTBANK_")}
    env.update(
        PROMPTBANK_CLUSTER_NAME=name,
        PROMPTBANK_CLUSTER_DIR=str(parent / "state"),
        PROMPTBANK_CLUSTER_PORT=str(free_port()),
        PROMPTBANK_CLUSTER_START_SECONDS="240",
        PROMPTBANK_MODEL_PATH=str(model),
        PROMPTBANK_DATA_DIR=str(tmp_path_factory.mktemp("cluster-data")),
        PROMPTBANK_DEVICE="cpu",
        PROMPTBANK_WORKER_POLL_SECONDS="0.2",
    )
    probe = Cluster(name, parent / "state", env, "", httpx.Client())
    try:
        up = probe.script("up")
        assert up.returncode == 0, f"up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        url = up.stdout.strip().splitlines()[-1]
        key = (probe.state / "admin_key").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            yield Cluster(name, probe.state, env, url, client)
    finally:
        probe.script("down")
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def trained(cluster: Cluster) -> dict[str, Any]:
    """A task trained through the balancer; its finished job."""
    client = cluster.client
    task = {
        "name": "sentiment",
        "kind": "classification",
        "labels": ["positive", "negative"],
        "template": "Review: {input}\nSentiment:",
    }
    assert client.post("/v1/tasks", json=task).status_code == 201
    dataset = client.post("/v1/datasets", json={"name": "toy", "examples": toy_examples(40)})
    assert dataset.status_code == 201, dataset.text
    body = {"type": "train", "task": "sentiment", "dataset_id": dataset.json()["id"], "hyperparameters": FAST}
    queued = client.post("/v1/jobs", json=body)
    assert queued.status_code == 202, queued.text
    deadline = time.monotonic() + 120
    while (job := client.get(f"/v1/jobs/{queued.json()['id']}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"the job did not finish in 120 s: {job}"
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    return job  # type: ignore[no-any-return]


def test_up_prints_the_balancer_url_last_and_every_host_is_healthy(cluster: Cluster) -> None:
    assert cluster.url == f"http://127.0.0.1:{cluster.env['PROMPTBANK_CLUSTER_PORT']}"
    status = cluster.script("status")
    assert status.returncode == 0, status.stdout + status.stderr
    hosts = {line.split()[0]: line.split()[2] for line in status.stdout.splitlines()}
    assert hosts == dict.fromkeys(["lb", "db", "redis", "api1", "api2", "worker1", "worker2"], "up"), status.stdout
    for _ in range(2):  # round robin: each replica once, each sharing its limits through the Redis host
        health = cluster.client.get("/healthz").json()
        assert health["status"] == "ok" and health["shared_limits"] == "up", health
    again = cluster.script("up")
    assert again.returncode == 0 and "already up" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == cluster.url


def test_every_host_runs_its_roles_settings_from_the_files_compose_reads(cluster: Cluster) -> None:
    threads = set()
    for host, role in [("api1", "api"), ("api2", "api"), ("worker1", "worker"), ("worker2", "worker")]:
        env = environ(int((cluster.state / "run" / f"{host}.pid").read_text()))
        assert role_settings(role).items() <= env.items(), host
        threads.add(env["PROMPTBANK_TORCH_THREADS"])
        assert env["OMP_NUM_THREADS"] == env["PROMPTBANK_TORCH_THREADS"]
    # one budget for every process: this machine's cores shared by 4 processes (at least 1 thread each)
    assert threads == {str(max(1, len(os.sched_getaffinity(0)) // 4))}
    lb = (cluster.state / "run" / "lb.pid").read_text().strip()
    assert str(ROOT / "deploy" / "haproxy" / "haproxy.cfg") in Path(f"/proc/{lb}/cmdline").read_bytes().decode()


def test_a_job_queued_through_the_balancer_is_trained_on_a_worker_host(
    cluster: Cluster, trained: dict[str, Any]
) -> None:
    worker = cluster.query(f"SELECT worker_id FROM jobs WHERE id = {trained['id']}")
    host, pid, _ = worker.split(":")
    assert host in (f"{cluster.name}-worker1", f"{cluster.name}-worker2")
    assert pid == (cluster.state / "run" / f"{host.removeprefix(cluster.name + '-')}.pid").read_text().strip()


def test_a_task_is_always_served_by_the_same_replica_which_keeps_its_prompt(
    cluster: Cluster, trained: dict[str, Any]
) -> None:
    client = cluster.client
    answers = [client.post("/v1/infer", json={"task": "sentiment", "inputs": ["a good film"]}) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5, answers[-1].text
    replicas = {a.headers[REPLICA] for a in answers}
    assert len(replicas) == 1, replicas
    # OpenAI's routes hash on "model", the same task name: the same replica
    chat = client.post(
        "/v1/chat/completions", json={"model": "sentiment", "messages": [{"role": "user", "content": "nice"}]}
    )
    assert chat.status_code == 200, chat.text
    assert chat.headers[REPLICA] in replicas
    # the replica that served it holds the prompt (one miss, then hits); the other never loaded it
    pools = {}
    for _ in range(20):  # /v1/stats goes round robin: ask until both replicas answered
        stats = client.get("/v1/stats")
        pools[stats.headers[REPLICA]] = stats.json()["engine"]["pool"]
        if len(pools) == 2:
            break
    (serving,) = replicas
    (other,) = set(pools) - replicas
    assert pools[serving]["entries"] == 1 and pools[serving]["hits"] >= 5, pools
    assert pools[other]["entries"] == 0, pools


def test_tasks_spread_over_both_replicas_and_each_keeps_its_own(cluster: Cluster) -> None:
    client = cluster.client
    seen: dict[str, set[str]] = {}
    for name in [f"task-{i}" for i in range(12)]:
        for _ in range(2):  # no such task: a 404, from the replica its name hashes to
            answer = client.post("/v1/infer", json={"task": name, "inputs": ["x"]})
            assert answer.status_code == 404, answer.text
            seen.setdefault(name, set()).add(answer.headers[REPLICA])
    assert all(len(replicas) == 1 for replicas in seen.values()), seen
    assert set().union(*seen.values()) == {"api1", "api2"}, seen
    # and everything else goes round robin; the balancer's counters show both replicas served
    assert {client.get("/v1/tasks").headers[REPLICA] for _ in range(4)} == {"api1", "api2"}
    servers = {row["svname"]: int(row["stot"]) for row in cluster.balancer_stats() if row["pxname"] == "api"}
    assert servers["api1"] > 0 and servers["api2"] > 0, servers


def test_a_killed_api_host_loses_no_request_and_status_reports_it(cluster: Cluster) -> None:
    pid = int((cluster.state / "run" / "api2.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    # at once, before any health check noticed: refused connections are retried on api1
    answers = [cluster.client.post("/v1/infer", json={"task": f"task-{i}", "inputs": ["x"]}) for i in range(12)]
    assert {(a.status_code, a.headers.get(REPLICA)) for a in answers} == {(404, "api1")}
    deadline = time.monotonic() + 10
    while (status := cluster.script("status")).returncode == 0:
        assert time.monotonic() < deadline, status.stdout
        time.sleep(0.5)
    lines = {line.split()[0]: line for line in status.stdout.splitlines()}
    assert "down" in lines["api2"] and "up" in lines["api1"], status.stdout


def test_down_stops_every_process_and_removes_every_namespace_and_file(cluster: Cluster) -> None:
    pids = [int(path.read_text()) for path in (cluster.state / "run").glob("*.pid")]
    pids.append(int((cluster.state / "db" / "data" / "postmaster.pid").read_text().split()[0]))
    assert len(pids) == 7  # lb, redis, 2 API hosts, 2 workers and PostgreSQL
    down = cluster.script("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert cluster.namespaces() == []
    running = [pid for pid in pids if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]
    assert running == [], running
    assert not cluster.state.exists()
    again = cluster.script("down")  # nothing up: still succeeds
    assert again.returncode == 0, again.stderr


def _state(pid: int) -> str:
    """A process's state letter (Z: ended, waiting for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


# --- docker-compose.yml: the same layout, from the same files -------------------------------------------------------


def test_compose_runs_the_clusters_layout_from_the_same_files() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "lb"}
    assert services["api"]["deploy"]["replicas"] == "${PROMPTBANK_CLUSTER_APIS:-2}"
    assert services["worker"]["deploy"]["replicas"] == "${PROMPTBANK_CLUSTER_WORKERS:-2}"
    assert services["api"]["env_file"] == ["deploy/api.env"]
    assert services["worker"]["env_file"] == ["deploy/worker.env"]
    assert "ports" not in services["api"], "only the balancer is reached from outside"
    lb = services["lb"]
    assert lb["volumes"] == ["./deploy/haproxy:/usr/local/etc/haproxy:ro"]
    assert lb["command"] == [
        "haproxy",
        "-f",
        "/usr/local/etc/haproxy/haproxy.cfg",
        "-f",
        "/usr/local/etc/haproxy/compose.cfg",
    ]
    assert lb["environment"]["PROMPTBANK_CLUSTER_APIS"] == "${PROMPTBANK_CLUSTER_APIS:-2}"


def test_the_role_files_name_only_real_settings() -> None:
    known = {f"PROMPTBANK_{name.upper()}" for name in Settings.model_fields} | {"OMP_WAIT_POLICY"}
    for role in ROLES:
        assert set(role_settings(role)) <= known, role
    assert role_settings("api")["PROMPTBANK_RUN_WORKER"] == "false"


@pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="HAProxy is not installed (scripts/cluster.sh up installs it)"
)
def test_haproxy_accepts_the_compose_configuration(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PROMPTBANK_LB_BIND": ":8000",
        "PROMPTBANK_LB_STATS_SOCKET": str(tmp_path / "haproxy.sock"),
        "PROMPTBANK_CLUSTER_APIS": "2",
    }
    configs = [
        "-f",
        str(ROOT / "deploy" / "haproxy" / "haproxy.cfg"),
        "-f",
        str(ROOT / "deploy" / "haproxy" / "compose.cfg"),
    ]
    checked = subprocess.run(["haproxy", "-c", *configs], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_docker_compose_accepts_the_file() -> None:
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("docker compose is not installed here (the file's layout is checked above)")
    env = {**os.environ, "PROMPTBANK_ADMIN_KEY": "k" * 40}
    checked = subprocess.run(["docker", "compose", "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
