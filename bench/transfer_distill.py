"""Distillation on Rotten Tomatoes sentiment (the `distill` part of `python -m bench.transfer`).

Per seed (split s of bench/quality_data.py's sentiment task, training seeded s), through the distill job's own
code (workers/jobs/distill) and the trainer (workers/training.train_prompt), all for --steps steps:
- teachers: a deep `prefix` prompt and a plain 20-token `prompt`, trained on gold labels;
- deep -> plain: a 20-token `prompt` student of the prefix teacher; long -> short: a 5-token student of the
  20-token teacher; each against the same student trained on gold labels only;
- context distillation: the frozen model reading a --shots-shot prompt teaches a 20-token prompt on the training
  inputs without their labels (alpha 0), against the few-shot prompt's own accuracy;
- generations: G1 -> G2 -> ... from the 20-token teacher, each generation's test accuracy.
Held-out accuracy on the test split; bytes stored; served rows/s of teacher and students side by side in one pool
(bench/quality_serving.py).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods import load_segments, parse_config
from bench.quality import held_out
from bench.quality_data import TASKS, few_shot_template
from bench.quality_serving import served_rates
from bench.transfer_jobs import job_context
from workers.jobs import KINDS
from workers.jobs.distill.options import Distillation, DistillOptions
from workers.training import train_prompt

Log = Callable[[str], None]


def _config(args: argparse.Namespace, seed: int, **values: Any) -> dict[str, Any]:
    return {"steps": args.steps, "eval_every": max(1, args.steps // 4), "seed": seed, **values}


def run(frozen: FrozenModel, args: argparse.Namespace, log: Log) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    served: list[dict[str, float]] = []
    for seed in range(args.seeds):
        seed_records, rates = one_seed(frozen, args, seed, log)
        records.extend(seed_records)
        served.append(rates)
    return {"records": records, "served_rows_per_second": served}


def one_seed(
    frozen: FrozenModel, args: argparse.Namespace, seed: int, log: Log
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    task = TASKS["sentiment"]
    splits = task.draw(args.train_size, args.val_size, args.test_size, seed)
    artifacts: dict[str, Artifact] = {}
    records: list[dict[str, Any]] = []

    def score(name: str, artifact: Artifact, started: float, **extra: Any) -> None:
        accuracy = held_out(frozen, task, load_segments(frozen, artifact), task.spec, splits.test)
        artifacts[name] = artifact
        record = {"seed": seed, "name": name, "accuracy": accuracy, "bytes": len(artifact.to_bytes()), **extra}
        record["minutes"] = (time.perf_counter() - started) / 60
        records.append(record)
        log(f"seed {seed} {name}: accuracy {accuracy:.3f} ({record['minutes']:.1f} min)")

    def gold(name: str, **values: Any) -> None:
        started = time.perf_counter()
        config = parse_config(_config(args, seed, **values))
        score(name, train_prompt(frozen, task.spec, splits.train, splits.val, config).artifact, started)

    def student(
        name: str,
        teacher: dict[str, Any],
        train: list[tuple[str, str | None]],
        val: list[tuple[str, str | None]],
        **values: Any,
    ) -> None:
        """A student trained by the distill job's own code; teacher prompts are named by their record names."""
        started = time.perf_counter()
        hyper = _config(args, seed, **values)
        method_part = {k: v for k, v in hyper.items() if k not in Distillation.model_fields}
        names = teacher.get("prompts", [])
        options = DistillOptions.model_validate(
            {
                "teacher": {"prompts": list(range(1, len(names) + 1))} if names else teacher,
                "distillation": {k: v for k, v in hyper.items() if k in Distillation.model_fields},
            }
        )
        ctx = job_context(frozen, task.spec, parse_config(method_part), options, train, val)
        ctx.teachers = [(index + 1, artifacts[key]) for index, key in enumerate(names)]
        result = KINDS["distill"].run(ctx)
        score(name, result.artifact, started, generations=result.metrics["generations"])

    labeled: list[tuple[str, str | None]] = list(splits.train)
    val: list[tuple[str, str | None]] = list(splits.val)
    gold("teacher prefix (20)", method="prefix", num_virtual_tokens=20)
    gold("teacher prompt (20)", method="prompt", num_virtual_tokens=20)
    gold("gold-only prompt (5)", method="prompt", num_virtual_tokens=5)
    student("prefix -> prompt (20)", {"prompts": ["teacher prefix (20)"]}, labeled, val, num_virtual_tokens=20)
    student("prompt (20) -> prompt (5)", {"prompts": ["teacher prompt (20)"]}, labeled, val, num_virtual_tokens=5)
    # Context distillation: the few-shot prompt's solved examples are the instruction the frozen model reads.
    template = few_shot_template(task, splits.train, args.shots, seed)
    few = held_out(frozen, task, None, TaskSpec("classification", template, task.spec.labels), splits.test)
    records.append({"seed": seed, "name": f"{args.shots}-shot prompt (context teacher)", "accuracy": few})
    instruction = template[: -len(task.spec.template)].strip()
    unlabeled: list[tuple[str, str | None]] = [(text, None) for text, _ in splits.train]
    student(
        "context -> prompt (20), no labels",
        {"instruction": instruction},
        unlabeled,
        [(text, None) for text, _ in splits.val],
        num_virtual_tokens=20,
        alpha=0.0,
    )
    student(
        "prompt (20) generations",
        {"prompts": ["teacher prompt (20)"]},
        labeled,
        val,
        num_virtual_tokens=20,
        alpha=0.0,
        generations=args.generations,
    )
    texts = [text for text, _ in splits.test][: args.serve_rows]
    keep = ["teacher prefix (20)", "teacher prompt (20)", "prefix -> prompt (20)", "prompt (20) -> prompt (5)"]
    rates = served_rates(frozen, task.spec, {name: artifacts[name] for name in keep}, texts, repeats=3)
    return records, {name: rates[name] for name in keep}
