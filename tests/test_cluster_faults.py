"""The fault scenario of `python -m bench.cluster`, small: two API hosts and one worker host on the tiny model, an
open-loop load through the balancer while an API host and the worker host are killed with SIGKILL (and started
again) and the database host's link goes down for 10 s. No answer may differ from the same request served alone, no
job may be lost or trained twice, and every host must be healthy again after each fault.

Needs root and `ip netns` (skipped without them); about two minutes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.cluster import configure, parse_args, run
from bench.cluster_hosts import REPLICA_HEADER, Cluster, ScriptFailed, namespaces_unavailable
from bench.cluster_report import report


@pytest.fixture(scope="module")
def scenario(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster, dict[str, Any]]]:
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    args = parse_args(
        [
            *("--apis", "2", "--workers", "1", "--faults", "api,worker,db", "--rate", "10"),
            *("--tasks", "2", "--generation-tasks", "1", "--inputs", "4", "--train-steps", "20"),
            *("--jobs", "2", "--job-steps", "300", "--kill-at-step", "0", "--heartbeat-timeout", "8", "--settle", "2"),
            *("--api-down-seconds", "3", "--worker-down-seconds", "1", "--db-down-seconds", "10"),
            *("--healthy-timeout", "120", "--job-timeout", "180", "--affinity-tasks", "0"),
            *("--model-path", str(tiny_model_dir), "--data-dir", str(tmp_path_factory.mktemp("faults-data"))),
            *("--name", f"pbf{os.getpid() % 100000}"),
        ]
    )
    # PostgreSQL runs as the postgres user: its state must sit where that user can reach, not in pytest's 0700 tmp
    parent = Path(tempfile.mkdtemp(prefix="promptbank-faults-test-"))
    parent.chmod(0o755)
    cluster = configure(args, parent, {"PROMPTBANK_DEVICE": "cpu"})
    try:
        yield cluster, run(args, cluster)
    finally:
        try:
            cluster.down()
        finally:
            shutil.rmtree(parent, ignore_errors=True)


def test_no_fault_gives_a_wrong_answer_or_loses_a_job_and_every_host_comes_back(
    scenario: tuple[Cluster, dict[str, Any]],
) -> None:
    _, figures = scenario
    faults = {fault["kind"]: fault for fault in figures["faults"]}
    assert list(faults) == ["api", "worker", "db"]
    for kind, fault in faults.items():
        seen, jobs = fault["requests"], fault["jobs"]
        assert seen["count"] > 0, kind
        assert seen["wrong"] == 0, (kind, seen["wrong_examples"])
        assert jobs["lost"] == [] and jobs["trained_twice"] == [], (kind, jobs)
        assert jobs["succeeded_once"] == jobs["queued"] == 2, (kind, jobs)
        assert fault["healthy_after_s"] is not None, (kind, fault)
    assert figures["outside_faults"]["wrong"] == 0
    # the worker died mid-job: that job was started again (by the restarted worker, the only one) and stored once
    retried = [job for job in faults["worker"]["jobs"]["jobs"] if job["id"] in faults["worker"]["jobs"]["retried"]]
    assert retried, faults["worker"]["jobs"]
    assert all(len(job["started_by"]) >= 2 and set(job["started_by"]) == {"worker1"} for job in retried), retried
    # while the API host was down, its survivor answered
    assert len(faults["api"]["requests"]["replicas"]) >= 1


def test_the_report_has_a_table_and_the_targets_of_each_fault(scenario: tuple[Cluster, dict[str, Any]]) -> None:
    _, figures = scenario
    text = report(figures)
    for heading in ("API host killed", "worker host killed", "database link down"):
        assert f"#### {heading}" in text
    assert text.count("Targets: ") == 3
    assert "0 wrong answers met" in text


def test_without_affinity_the_balancer_spreads_a_tasks_requests(scenario: tuple[Cluster, dict[str, Any]]) -> None:
    cluster, _ = scenario
    headers = {"Authorization": f"Bearer {cluster.admin_key()}"}
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=60) as client:

        def replicas() -> set[str]:
            answers = [client.post("/v1/infer", json={"task": "serve-0", "inputs": ["a good film"]}) for _ in range(6)]
            assert [answer.status_code for answer in answers] == [200] * 6, answers[-1].text
            return {answer.headers[REPLICA_HEADER] for answer in answers}

        assert len(replicas()) == 1
        cluster.kill("lb")
        cluster.start("lb", extra={"PROMPTBANK_CLUSTER_AFFINITY": "off"})
        assert replicas() == {"api1", "api2"}
        cluster.kill("lb")
        cluster.start("lb")
        assert len(replicas()) == 1


def test_kill_and_start_refuse_the_database_host_and_link_an_unknown_one(
    scenario: tuple[Cluster, dict[str, Any]],
) -> None:
    cluster, _ = scenario
    with pytest.raises(ScriptFailed, match="kill and start take lb, redis, api1..api2 or worker1..worker1"):
        cluster.kill("db")
    with pytest.raises(ScriptFailed, match="usage: link HOST down"):
        cluster.link("api7", "down")
