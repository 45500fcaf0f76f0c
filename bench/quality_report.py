"""The quality benchmark's tables: per task, every method and baseline with accuracy over seeds and its costs."""

from __future__ import annotations

import statistics
from typing import Any

from bench.quality_serving import MIXED, PROMPT_AS_MANY


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> name -> {accuracy mean/sd/min/max over seeds, per-seed values, costs, errors}."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for record in records:
        grouped.setdefault(record["task"], {}).setdefault(record["name"], []).append(record)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for task, names in grouped.items():
        for name, runs in names.items():
            ok = [run for run in runs if run.get("error") is None]
            accuracies = [float(run["accuracy"]) for run in ok]
            steps = [float(run["seconds_per_step"]) for run in ok if run.get("seconds_per_step") is not None]
            first = ok[0] if ok else {}
            summary.setdefault(task, {})[name] = {
                "kind": runs[0]["kind"],
                "seeds": [run["seed"] for run in ok],
                "accuracies": accuracies,
                "mean": statistics.mean(accuracies) if accuracies else None,
                "sd": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0 if accuracies else None,
                "min": min(accuracies, default=None),
                "max": max(accuracies, default=None),
                "trainable_parameters": first.get("trainable_parameters"),
                "bytes": first.get("bytes"),
                "seconds_per_step": statistics.mean(steps) if steps else None,
                "errors": sorted({run["error"] for run in runs if run.get("error") is not None}),
            }
    return summary


def _number(value: Any, spec: str = ",") -> str:
    return "-" if value is None else format(value, spec)


def task_table(summary: dict[str, dict[str, Any]], served: dict[str, float] | None) -> str:
    """One markdown table: baselines first, then promptbank's methods, then PEFT's."""
    lines = [
        "| method | held-out accuracy, mean ± sd | min-max | seeds | trainable params | bytes stored | s/step "
        "| served rows/s vs prompt |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    order = {"baseline": 0, "method": 1, "peft": 2}
    for name, row in sorted(summary.items(), key=lambda item: order[item[1]["kind"]]):
        if row["mean"] is None:
            lines.append(f"| {name} | failed: {'; '.join(row['errors'])[:300]} | | 0 | | | | |")
            continue
        relative = "-"
        if served is not None and name in served and served.get("prompt"):
            relative = f"{served[name] / served['prompt']:.2f}"
        failed = f" ({len(row['errors'])} failed)" if row["errors"] else ""
        lines.append(
            f"| {name} | {row['mean']:.3f} ± {row['sd']:.3f}{failed} | {row['min']:.3f}-{row['max']:.3f} "
            f"| {len(row['seeds'])} | {_number(row['trainable_parameters'])} | {_number(row['bytes'])} "
            f"| {_number(row['seconds_per_step'], '.2f')} | {relative} |"
        )
    return "\n".join(lines)


def serving_table(served: dict[str, float]) -> str:
    """Rows/s of each method's rows alone (vs prompt's alone) and of all methods mixed (vs as many prompt rows)."""
    lines = ["| rows served | rows/s | vs prompt |", "|---|---:|---:|"]
    for name, rate in served.items():
        label = name if name in (MIXED, PROMPT_AS_MANY) else f"{name} only"
        base = served.get(PROMPT_AS_MANY if name in (MIXED, PROMPT_AS_MANY) else "prompt")
        lines.append(f"| {label} | {rate:.1f} | {rate / base:.2f} |" if base else f"| {label} | {rate:.1f} | - |")
    return "\n".join(lines)
