"""bench.cluster's figures: each fault's requests (failed, by status; wrong answers), jobs and recovery, checked
against the issue's targets, as JSON and as markdown tables."""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.cluster_load import Outcome, Sample, wrong

API_FAILED_SHARE = 0.01  # at most 1% of requests failed during an API host's kill
HEALTHY_AFTER_DB = 10.0  # every host healthy within 10 s of the database's return


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def requests(
    outcomes: list[Outcome], alone: dict[Sample, dict[str, Any]], tolerance: float, since: float, until: float
) -> dict[str, Any]:
    """The requests due in [since, until): how many, which failed (by status), which answered wrong, who answered."""
    window = [outcome for outcome in outcomes if since <= outcome.sent < until]
    failed = Counter(failure for outcome in window if (failure := outcome.failure) is not None)
    wrong_answers = []
    for outcome in window:
        if outcome.answer is not None and (why := wrong(outcome.answer, alone[outcome.sample], tolerance)):
            wrong_answers.append({"task": outcome.sample.task, "input": outcome.sample.text, "why": why})
    answered = [outcome.latency for outcome in window if outcome.status == 200]
    count = len(window)
    return {
        "seconds": round(until - since, 1),
        "count": count,
        "failed": sum(failed.values()),
        "failed_share": sum(failed.values()) / count if count else 0.0,
        "failed_by_status": dict(failed.most_common()),
        "wrong": len(wrong_answers),
        "wrong_examples": wrong_answers[:5],
        "replicas": dict(Counter(outcome.replica or "-" for outcome in window if outcome.status == 200)),
        "latency_p50_s": percentile(answered, 0.5),
        "latency_p99_s": percentile(answered, 0.99),
    }


def targets(fault: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets this fault is held to."""
    jobs, seen = fault["jobs"], fault["requests"]
    met = {
        "0 wrong answers": seen["wrong"] == 0,
        "0 jobs lost or trained twice": not jobs["lost"] and not jobs["trained_twice"],
    }
    if fault["kind"] == "api":
        met["at most 1% of requests failed"] = seen["failed_share"] <= API_FAILED_SHARE
    if fault["kind"] == "db":
        healthy = fault["healthy_after_s"]
        met["every host healthy within 10 s"] = healthy is not None and healthy <= HEALTHY_AFTER_DB
    return met


def _failed(seen: dict[str, Any]) -> str:
    if not seen["failed"]:
        return "0"
    statuses = ", ".join(f"{count} {status}" for status, count in seen["failed_by_status"].items())
    return f"{seen['failed']} ({seen['failed_share']:.1%}: {statuses})"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def fault_table(fault: dict[str, Any]) -> str:
    seen, jobs = fault["requests"], fault["jobs"]
    attempts = ", ".join(f"{job['id']}: {'+'.join(job['started_by']) or '-'}" for job in jobs["jobs"])
    rows = [
        ("requests due during the fault", f"{seen['count']} in {seen['seconds']} s", ""),
        ("failed (status)", _failed(seen), "at most 1%" if fault["kind"] == "api" else ""),
        ("wrong answers", str(seen["wrong"]), "0"),
        ("answered by", ", ".join(f"{r} {n}" for r, n in sorted(seen["replicas"].items())) or "-", ""),
        ("latency p50 / p99 (s)", f"{_seconds(seen['latency_p50_s'])} / {_seconds(seen['latency_p99_s'])}", ""),
        ("jobs queued / succeeded once", f"{jobs['queued']} / {jobs['succeeded_once']}", ""),
        ("jobs lost / trained twice", f"{len(jobs['lost'])} / {len(jobs['trained_twice'])}", "0 / 0"),
        ("jobs started by (job: workers, in order)", attempts or "-", ""),
        (
            "seconds until every host healthy",
            f"{_seconds(fault['healthy_after_s'])} after {fault['ended_by']}",
            "10 s" if fault["kind"] == "db" else "",
        ),
    ]
    met = targets(fault)
    lines = [f"#### {fault['name']}: {fault['what']}", "", "| | | target |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {target} |" for name, value, target in rows]
    lines += ["", "Targets: " + "; ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in met.items()), ""]
    return "\n".join(lines)


def affinity_table(affinity: list[dict[str, Any]]) -> str:
    lines = [
        "| pool capacity per host | balancing | warm-up hit rate | hit rate | misses | evictions | requests per host |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in affinity:
        for mode, figures in run["modes"].items():
            measured = figures["measured"]
            served = ", ".join(f"{r} {n}" for r, n in sorted(measured["served"].items()))
            rates = [_share(figures["warmup"]["hit_rate"]), _share(measured["hit_rate"])]
            lines.append(
                f"| {figures['capacity']} | {mode.replace('_', ' ')} | {rates[0]} | {rates[1]} | "
                f"{measured['misses']} | {measured['evictions']} | {served} |"
            )
    first = affinity[0]
    lines.append("")
    lines.append(
        f"{first['tasks']} tasks, Zipf s = {first['zipf_s']}: {first['warmup']} warm-up requests, then "
        f"{first['requests']} measured ({first['distinct_tasks']} distinct tasks in all); each mode from empty pools."
    )
    return "\n".join(lines)


def report(figures: dict[str, Any]) -> str:
    lines = [f"### bench.cluster: {figures['layout']}", ""]
    lines.append(
        f"Open-loop load {figures['rate']} requests/s over {figures['samples']} (task, input) pairs; every answer "
        f"compared with the same request served alone (tolerance {figures['tolerance']})."
    )
    baseline = figures["outside_faults"]
    lines += [
        "",
        f"Outside the faults: {baseline['count']} requests, failed {_failed(baseline)}, wrong {baseline['wrong']}.",
        "",
    ]
    for fault in figures["faults"]:
        lines.append(fault_table(fault))
    if figures.get("affinity"):
        lines += [
            "#### Prompt pool hit rate with and without task affinity",
            "",
            affinity_table(figures["affinity"]),
            "",
        ]
    return "\n".join(lines)
