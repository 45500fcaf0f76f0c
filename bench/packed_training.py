"""Many training jobs as one, measured: N small jobs trained one after another, then the same N packed in shared
forward/backward passes (workers.training.train_prompts, what a worker does with a burst of queued train jobs),
and PEFT's PromptTuning step at the same batch size.

    python -m bench.packed_training [--jobs 8] [--steps 30] [--batch-size 8] [--tokens 10] [--methods prompt]
                                    [--peft-jobs 2] [--out bench/results/packed_training.json]

Each job is a word task of bench/transfer_data.py ("is this word in category C?", balanced yes/no), 48 training and
16 validation words, validated every --eval-every steps. Wall time covers everything a job does (setup, every
step, every validation pass), so jobs/hour is what a worker delivers. The packed prompts are compared with the
sequential ones (largest difference of any stored value, and validation accuracy): packing must not change
results beyond float rounding. Run it alone on the machine (two torch processes on 2 cores distort each other).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any, cast

import torch

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.formats.bundled import ensure_bundled_model
from app.engine.methods import parse_config
from bench.quality_peft import train_peft
from bench.transfer_data import examples, spec, word_tasks
from workers.training import TrainJob, TrainResult, train_prompts


def _jobs(frozen: FrozenModel, args: argparse.Namespace) -> list[TrainJob]:
    family = word_tasks(seed=0)
    tasks = random.Random(0).sample(family, args.jobs)
    jobs = []
    for number, task in enumerate(tasks):
        method = args.methods[number % len(args.methods)]
        config = parse_config(
            {
                "method": method,
                "num_virtual_tokens": args.tokens,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "eval_every": args.eval_every,
                "init": "text",
                "init_text": task.question,
                "seed": number,
            }
        )
        pairs = examples(task, 64, seed=number)
        jobs.append(TrainJob(spec(), pairs[:48], pairs[48:], config))
    return jobs


def _results(outcomes: list[TrainResult | BaseException]) -> list[TrainResult]:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [outcome for outcome in outcomes if isinstance(outcome, TrainResult)]


def _largest_difference(a: TrainResult, b: TrainResult) -> float:
    return max(float((a.artifact.tensors[n] - b.artifact.tensors[n]).abs().max()) for n in a.artifact.tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=10)
    parser.add_argument("--methods", type=lambda t: [m for m in t.split(",") if m], default=["prompt"])
    parser.add_argument("--peft-jobs", type=int, default=2, help="jobs trained with PEFT for its step time")
    parser.add_argument("--float64", action="store_true", help="run the model in float64: packing vs rounding")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/packed_training.json")
    args = parser.parse_args()
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - began) / 60:6.1f} min] {message}", flush=True)

    torch.manual_seed(0)
    frozen = load_frozen_model(ensure_bundled_model(Path(args.data_dir) / "models"), device="cpu")
    if args.float64:  # rows padded to other lengths then round alike: a difference left is packing's own
        wide = cast(Any, frozen.model).to(torch.float64)  # a new FrozenModel: it reads the model's dtype once
        frozen = FrozenModel(wide, frozen.tokenizer, frozen.identity)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    jobs = _jobs(frozen, args)
    warm = [TrainJob(j.spec, j.train, j.val, j.config.model_copy(update={"steps": 2})) for j in jobs[:2]]
    train_prompts(frozen, warm)  # first calls allocate and tune: not part of either figure

    started = time.perf_counter()
    alone = [_results(train_prompts(frozen, [job]))[0] for job in jobs]
    sequential = time.perf_counter() - started
    log(f"{len(jobs)} jobs one after another: {sequential:.1f} s")
    started = time.perf_counter()
    packed = _results(train_prompts(frozen, jobs))
    together = time.perf_counter() - started
    log(f"{len(jobs)} jobs packed: {together:.1f} s")

    peft = []
    for job in jobs[: args.peft_jobs]:
        baseline = train_peft(
            frozen,
            "peft_prompt_tuning",
            job.spec,
            job.train,
            job.val or [],
            job.val or [],
            steps=args.steps,
            batch_size=args.batch_size,
            eval_every=args.eval_every,
            seed=0,
            num_virtual_tokens=args.tokens,
            max_new_tokens=1,
        )
        peft.append(baseline["seconds_per_step"])
    per_step_alone = sum(r.metrics["seconds_per_step"] or 0.0 for r in alone) / len(alone)  # type: ignore[operator]
    figures: dict[str, Any] = {
        "args": vars(args),
        "sequential_seconds": sequential,
        "packed_seconds": together,
        "jobs_per_hour_sequential": 3600 * len(jobs) / sequential,
        "jobs_per_hour_packed": 3600 * len(jobs) / together,
        "speedup": sequential / together,
        "seconds_per_step_alone": per_step_alone,
        "seconds_per_shared_step_packed": packed[0].metrics["seconds_per_step"],
        "peft_seconds_per_step": sum(peft) / len(peft) if peft else None,
        "largest_difference": max(_largest_difference(a, b) for a, b in zip(alone, packed, strict=True)),
        "val_accuracy_alone": [r.metrics["best_val_accuracy"] for r in alone],
        "val_accuracy_packed": [r.metrics["best_val_accuracy"] for r in packed],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    n = len(jobs)
    print(f"\n| {n} jobs, {args.steps} steps at batch {args.batch_size} | wall s | jobs/hour |")
    print("|---|---:|---:|")
    print(f"| one after another | {sequential:.1f} | {figures['jobs_per_hour_sequential']:.0f} |")
    print(f"| packed | {together:.1f} | {figures['jobs_per_hour_packed']:.0f} |")
    print(f"\npacked / sequential jobs/hour: {figures['speedup']:.2f}x")
    shared = figures["seconds_per_shared_step_packed"]
    print(f"step time: one job alone {per_step_alone:.3f} s; a shared step of {n} packed {shared:.3f} s")
    if peft:
        print(f"PEFT PromptTuning step (same batch, model and rows): {figures['peft_seconds_per_step']:.3f} s")
    print(f"largest difference of a stored value, packed vs alone: {figures['largest_difference']:.2e}")
    same = sum(a == b for a, b in zip(figures["val_accuracy_alone"], figures["val_accuracy_packed"], strict=True))
    print(f"best validation accuracy equal in {same} of {n} jobs")
    log(f"done; figures in {out}")


if __name__ == "__main__":
    main()
