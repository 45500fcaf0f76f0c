"""The cluster of scripts/cluster.sh as bench.cluster drives it: up and down, a host killed, started or cut off, each
host's health as `status` reports it, and the database's rows read through PostgreSQL's socket in the state
directory (a Unix socket: the db host's link going down does not cut the observer off).

Everything a host is, how it starts and with which settings stays in the script; this module only calls it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "cluster.sh"
REPLICA_HEADER = "X-Promptbank-Replica"  # the balancer names the API host that answered


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run the cluster, or None when it can."""
    if os.geteuid() != 0:
        return "scripts/cluster.sh needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "scripts/cluster.sh needs iproute2's ip command"
    probe = f"pbprobe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"this machine refuses network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], check=True)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ScriptFailed(RuntimeError):
    """scripts/cluster.sh ended with an error; the message holds the end of what it printed."""


@dataclass
class Cluster:
    """One cluster: the environment every call of the script gets (its name, state directory, port, host counts and
    the PROMPTBANK_* settings of every host)."""

    name: str
    state: Path
    port: int
    apis: int
    workers: int
    settings: dict[str, str] = field(default_factory=dict)
    start_seconds: float = 600.0

    @property
    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PROMPTBANK_")}
        env.update(self.settings)
        env.update(
            PROMPTBANK_CLUSTER_NAME=self.name,
            PROMPTBANK_CLUSTER_DIR=str(self.state),
            PROMPTBANK_CLUSTER_PORT=str(self.port),
            PROMPTBANK_CLUSTER_APIS=str(self.apis),
            PROMPTBANK_CLUSTER_WORKERS=str(self.workers),
            PROMPTBANK_CLUSTER_START_SECONDS=str(int(self.start_seconds)),
        )
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_hosts(self) -> list[str]:
        return [f"api{i}" for i in range(1, self.apis + 1)]

    @property
    def worker_hosts(self) -> list[str]:
        return [f"worker{i}" for i in range(1, self.workers + 1)]

    def script(self, *args: str, extra: dict[str, str] | None = None) -> str:
        """Run scripts/cluster.sh with these arguments; its output, or ScriptFailed."""
        done = subprocess.run(
            ["bash", str(SCRIPT), *args],
            env={**self.env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=self.start_seconds + 60,
        )
        if done.returncode != 0:
            raise ScriptFailed(f"cluster.sh {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def up(self) -> str:
        """Bring the cluster up; the balancer's URL (the script's last line)."""
        return self.script("up").strip().splitlines()[-1]

    def down(self) -> None:
        self.script("down")

    def kill(self, host: str) -> None:
        self.script("kill", host)

    def start(self, host: str, extra: dict[str, str] | None = None) -> None:
        """Start a host's process again and return once it is healthy; extra: settings for this start only."""
        self.script("start", host, extra=extra)

    def start_many(self, hosts: Sequence[str], extra: dict[str, str] | None = None) -> None:
        """Start several hosts at once (each call waits for its own host)."""
        calls = [
            subprocess.Popen(
                ["bash", str(SCRIPT), "start", host],
                env={**self.env, **(extra or {})},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for host in hosts
        ]
        outputs = [call.communicate()[0] for call in calls]
        failed = [
            f"start {host} failed:\n{out[-2000:]}"
            for host, call, out in zip(hosts, calls, outputs, strict=True)
            if call.returncode != 0
        ]
        if failed:
            raise ScriptFailed("\n".join(failed))

    def link(self, host: str, state: str) -> None:
        self.script("link", host, state)

    def health(self) -> dict[str, bool]:
        """Each host's health as `status` reports it; an API host counts only when the balancer sends it traffic."""
        done = subprocess.run(["bash", str(SCRIPT), "status"], env=self.env, capture_output=True, text=True)
        healthy = {}
        for line in done.stdout.splitlines():
            words = line.split()
            if len(words) >= 3:
                healthy[words[0]] = words[2] == "up" and (not words[0].startswith("api") or "balancer: UP" in line)
        return healthy

    def wait_healthy(self, timeout: float, poll: float = 0.25) -> float | None:
        """The time.monotonic() at which `status` first reported every host healthy, or None after timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if health and all(health.values()):
                return time.monotonic()
            time.sleep(poll)
        return None

    def admin_key(self) -> str:
        return (self.state / "admin_key").read_text().strip()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of the cluster's database, read as its owner through the socket in the state directory."""
        with psycopg.connect(host=str(self.state / "db" / "run"), user="promptbank", dbname="promptbank") as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
