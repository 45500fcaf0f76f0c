"""bench.sharing's report: each layout's figures, and issue 10's targets with a verdict for each layout.

(a) two workers: their steps/s together >= 0.9x one worker alone (worker_alone, half the cores).
(b) serving beside training (serving_inprocess, serving_beside_worker*): p99 <= 2x serving_idle's, requests/s
    >= 0.5x serving_idle's.
(c) the API and two workers (the layout* layouts): every process >= 0.8x its fair share. With 3 busy processes on
    the host, a fair share is a third of what the process does alone on the whole machine:
    - the API: requests/s >= 0.8 / 3 = 0.27x serving_idle (the API alone, every core);
    - a worker: s/step <= 3 / 0.8 = 3.75x worker_alone_all_cores (a worker alone with PROMPTBANK_TORCH_THREADS =
      every core). Not worker_alone: its default budget is half the cores, so a third of its speed would be a
      sixth of the machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FRACTION_OF_FAIR_SHARE = 0.8
LAYOUT_PROCESSES = 3  # the API and two workers
API_RPS_MIN = FRACTION_OF_FAIR_SHARE / LAYOUT_PROCESSES  # of serving_idle's requests/s
WORKER_STEP_MAX = LAYOUT_PROCESSES / FRACTION_OF_FAIR_SHARE  # of worker_alone_all_cores's s/step
SERVING_BESIDE_TRAINING = (
    "serving_inprocess",
    "serving_beside_worker",
    "serving_beside_worker_passive",
    "serving_beside_worker_nice0",
)


@dataclass(frozen=True)
class Check:
    """One target on one layout: what was measured, and which of its processes missed (none: met)."""

    target: str
    layout: str
    measured: str
    goal: str
    misses: tuple[str, ...] = ()

    @property
    def met(self) -> bool:
        return not self.misses

    @property
    def verdict(self) -> str:
        return "met" if self.met else "not met: " + ", ".join(self.misses)


def _get(results: dict[str, Any], name: str, *keys: str) -> Any:
    value: Any = results.get(name)
    for key in keys:
        if value is None:
            return None
        value = value[int(key)] if isinstance(value, list) else value.get(key)
    return value


def checks(figures: dict[str, Any]) -> list[Check]:
    """Every target the layouts in `figures` can be checked against (a layout, or its base, missing: skipped)."""
    results = figures["layouts"]
    found: list[Check] = []
    alone, two = _get(results, "worker_alone", "steps_per_s"), _get(results, "two_workers", "steps_per_s")
    if alone and two:
        ratio = two / alone
        found.append(Check("(a)", "two_workers", f"{ratio:.2f}x", ">= 0.9x", () if ratio >= 0.9 else ("workers",)))
    idle_p99 = _get(results, "serving_idle", "serving", "p99_ms")
    idle_rps = _get(results, "serving_idle", "serving", "rps")
    full = _get(results, "worker_alone_all_cores", "jobs", "0", "seconds_per_step")
    for name in results:
        serving = _get(results, name, "serving")
        if name in SERVING_BESIDE_TRAINING and serving and idle_p99 and idle_rps:
            p99, rps = serving["p99_ms"] / idle_p99, serving["rps"] / idle_rps
            misses = [f"p99 {p99:.2f}x"] if p99 > 2 else []
            misses += [f"requests/s {rps:.2f}x"] if rps < 0.5 else []
            measured = f"p99 {p99:.2f}x, requests/s {rps:.2f}x"
            found.append(Check("(b)", name, measured, "p99 <= 2x, requests/s >= 0.5x idle", tuple(misses)))
        if name.startswith("layout") and serving and idle_rps and full:
            api = serving["rps"] / idle_rps
            steps = [job["seconds_per_step"] / full for job in _get(results, name, "jobs") or []]
            misses = [f"API {api:.2f}x"] if api < API_RPS_MIN else []
            misses += [f"worker {n + 1} {s:.2f}x" for n, s in enumerate(steps) if s > WORKER_STEP_MAX]
            measured = f"API {api:.2f}x; workers " + " / ".join(f"{s:.2f}x" for s in steps)
            goal = f"API >= {API_RPS_MIN:.2f}x idle, workers <= {WORKER_STEP_MAX:.2f}x alone on every core"
            found.append(Check("(c)", name, measured, goal, tuple(misses)))
    return found


def report(figures: dict[str, Any]) -> str:
    """The layouts' figures as a table, then every check with its verdict."""
    results, cores = figures["layouts"], figures["cores"]

    def fmt(value: Any, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"{cores} cores, {figures['args']['clients']} clients, window {figures['args']['window']:.0f} s per layout",
        "",
        "| layout | s/step of each job | steps/s (all jobs) | requests/s | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        jobs = " / ".join(fmt(job["seconds_per_step"]) for job in result.get("jobs", [])) or "-"
        serving = result.get("serving") or {}
        lines.append(
            f"| {name} | {jobs} | {fmt(result.get('steps_per_s'), 3)} | {fmt(serving.get('rps'))} | "
            f"{fmt(serving.get('p50_ms'), 0)} | {fmt(serving.get('p99_ms'), 0)} |"
        )
    lines += ["", "| target | layout | measured | goal | verdict |", "|---|---|---|---|---|"]
    for c in checks(figures):
        lines.append(f"| {c.target} | {c.layout} | {c.measured} | {c.goal} | {c.verdict} |")
    return "\n".join(lines)
