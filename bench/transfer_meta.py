"""Meta-initialisation and prompt transfer on held-out word tasks (the `meta` part of `python -m bench.transfer`).

1. Split the word-task family (bench/transfer_data.py) into meta-training tasks and held-out tasks (seeded); take
   --meta-tasks of the former, each with --meta-examples examples.
2. Meta-learn one initialisation per --orders through the job code itself (workers/jobs/meta_init).
3. Train a few single-task prompts on meta-training tasks (--donors): the stored prompts `auto` may also pick.
4. With `multitask` in --inits, train the multi-task start (bench/transfer_multitask.py): one prompt on the union of
   the meta-training tasks' examples. It is not in `auto`'s bank (the bank the stored run's `auto` chose from).
5. On every held-out task, seed and k in --shots: train a prompt from each --inits start on k examples for --steps
   steps, and read its accuracy on a fixed balanced test set at each of --report-at steps. The test set is passed as
   the trainer's validation set only to observe the prompt at those steps: nothing is selected by it.

With --state DIR a run that stops (a session's end, a crash) goes on where it stopped: the meta-initialisations,
the donors, the multi-task start and every finished (task, seed, k, init) are written there as they are made and
read back on the next run with the same DIR. A run with more --inits than DIR holds trains only the missing inits
of each (task, seed, k) and reports them beside the stored ones (each init trains exactly as it would beside the
others); delete DIR, or use another, after changing any other option.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from app.engine.core.model import FrozenModel
from app.engine.formats.artifact import Artifact
from app.engine.methods.base import FromPrompt
from app.engine.methods.prompt import PromptConfig
from bench.transfer_data import WordTask, examples, spec, split_family, test_set, word_tasks
from bench.transfer_jobs import job_context
from bench.transfer_multitask import train_multitask
from workers.auto_init import choose_init
from workers.inputs import Candidate, Source
from workers.jobs import KINDS
from workers.jobs.meta_init.options import MetaInitOptions, MetaLearning
from workers.training import EvalReport, TrainJob, train_prompts

Log = Callable[[str], None]


def meta_options(args: argparse.Namespace, order: str) -> dict[str, Any]:
    return {
        "method": "prompt",
        "num_virtual_tokens": args.tokens,
        "init": "text",
        "order": order,
        "inner_steps": args.inner_steps,
        "inner_lr": args.inner_lr,
        "outer_lr": args.outer_lr,
        "outer_steps": args.outer_steps,
        "meta_batch": args.meta_batch,
        "support_size": args.support,
        "query_size": args.query,
        "eval_every": max(1, args.outer_steps // 4),
        "seed": 0,
    }


def learn_inits(
    frozen: FrozenModel, sources: list[Source], args: argparse.Namespace, log: Log
) -> tuple[dict[str, Artifact], list[dict[str, Any]]]:
    """One meta-initialisation per order, by the meta_init job's own code."""
    inits: dict[str, Artifact] = {}
    records: list[dict[str, Any]] = []
    for order in args.orders:
        started = time.perf_counter()
        options = meta_options(args, order)
        method_part = {k: v for k, v in options.items() if k in PromptConfig.model_fields}
        stored = MetaInitOptions(
            name=order,
            tasks=[],
            meta=MetaLearning.model_validate({k: v for k, v in options.items() if k in MetaLearning.model_fields}),
        )
        ctx = job_context(frozen, None, PromptConfig.model_validate(method_part), stored)
        ctx.sources = sources
        result = KINDS["meta_init"].run(ctx)
        inits[f"meta_{order}"] = result.artifact
        seconds = time.perf_counter() - started
        record = {
            "order": order,
            "seconds": seconds,
            **{
                k: result.metrics[k]
                for k in (
                    "init_val_loss",
                    "best_val_loss",
                    "best_step",
                    "seconds_per_step",
                    "mean_meta_gradient_norm",
                    "clipped_steps",
                    "evaluations",
                )
            },
        }
        records.append(record)
        before, after = record["init_val_loss"], record["best_val_loss"]
        log(f"meta-init {order}: query loss after adaptation {before:.3f} -> {after:.3f} in {seconds / 60:.1f} min")
    return inits, records


def train_donors(frozen: FrozenModel, tasks: list[WordTask], args: argparse.Namespace) -> list[tuple[str, Artifact]]:
    """Single-task prompts of meta-training tasks, trained packed: what else a bank holds for `auto` to pick from."""
    jobs = []
    for task in tasks[: args.donors]:
        config = PromptConfig(
            num_virtual_tokens=args.tokens, init_text=task.question, steps=args.steps, eval_every=args.steps, seed=0
        )
        pairs = examples(task, 64, seed=0)
        jobs.append(TrainJob(spec(), pairs[:48], pairs[48:], config))
    donors = []
    for task, outcome in zip(tasks, train_prompts(frozen, jobs), strict=False):
        if isinstance(outcome, BaseException):
            raise RuntimeError(f"donor {task.name}: {outcome}") from outcome
        donors.append((f"task {task.name}", outcome.artifact))
    return donors


def few_shot(
    frozen: FrozenModel,
    task: WordTask,
    k: int,
    seed: int,
    inits: list[str],
    starts: dict[str, Artifact],
    candidates: list[Candidate],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Accuracy on the task's test set at each --report-at step of a prompt trained on k examples from each of
    `inits`. The prompts of all inits train packed in shared passes (workers.training.train_prompts), each exactly
    as it would alone: same examples, same seed, so the starts differ only in where they start."""
    test = test_set(task, args.test_size, seed=1000 + seed)
    train = examples(task, k, seed=seed, exclude={word for word, _ in test})
    base = {
        "num_virtual_tokens": args.tokens,
        "steps": args.steps,
        "batch_size": min(8, k),
        "eval_every": args.eval_every,
        "warmup_steps": 0,
        "seed": seed,
    }
    jobs, chosen, seen = [], [], []
    for init in inits:
        artifact: Artifact | None = None
        picked = None
        if init in starts:
            config = PromptConfig(**base, init=FromPrompt(from_prompt=1))
            artifact = starts[init]
        elif init == "auto":
            text = PromptConfig(**base, init="text", init_text=task.question)
            choice = choose_init(frozen, spec(), train, text, candidates)
            picked = next((c.label for c in candidates if c.prompt_id == choice.prompt_id), "text init")
            config, artifact = (
                (text, None)
                if choice.artifact is None
                else (PromptConfig(**base, init=FromPrompt(from_prompt=1)), choice.artifact)
            )
        elif init == "text":
            config = PromptConfig(**base, init="text", init_text=task.question)
        else:
            config = PromptConfig(**base, init=init)
        accuracy: dict[int, float] = {}

        def on_eval(report: EvalReport, accuracy: dict[int, float] = accuracy) -> None:
            accuracy[report.step] = float(report.val_accuracy or 0.0)

        jobs.append(TrainJob(spec(), train, test, config, init=artifact, on_eval=on_eval))
        chosen.append(picked)
        seen.append(accuracy)
    for init, outcome in zip(inits, train_prompts(frozen, jobs), strict=True):
        if isinstance(outcome, BaseException):
            raise RuntimeError(f"{task.name} seed {seed} k={k} {init}: {outcome}") from outcome
    return [
        {f"step_{step}": accuracy.get(step) for step in args.report_at} | {"chosen": picked}
        for accuracy, picked in zip(seen, chosen, strict=True)
    ]


class _State:
    """What a run has made so far, in --state DIR (nothing is kept without it)."""

    def __init__(self, directory: str | None) -> None:
        self.dir = Path(directory) if directory else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def artifacts(self, name: str) -> tuple[list[tuple[str, Artifact]], Any] | None:
        if self.dir is None or not (self.dir / f"{name}.json").is_file():
            return None
        saved = json.loads((self.dir / f"{name}.json").read_text())
        bank = [
            (label, Artifact.from_bytes((self.dir / f"{name}.{i}.bin").read_bytes()))
            for i, label in enumerate(saved["labels"])
        ]
        return bank, saved["records"]

    def save_artifacts(self, name: str, bank: list[tuple[str, Artifact]], records: Any) -> None:
        if self.dir is None:
            return
        for i, (_, artifact) in enumerate(bank):
            (self.dir / f"{name}.{i}.bin").write_bytes(artifact.to_bytes())
        text = json.dumps({"labels": [label for label, _ in bank], "records": records}, default=str)
        (self.dir / f"{name}.json").write_text(text)  # last: its presence means every file above is complete

    def groups(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every stored record by group key ("task/seed/k") and init; a later line for the same init wins."""
        if self.dir is None or not (self.dir / "few_shot.jsonl").is_file():
            return {}
        groups: dict[str, dict[str, dict[str, Any]]] = {}
        for line in (self.dir / "few_shot.jsonl").read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                groups.setdefault(entry["key"], {}).update((r["init"], r) for r in entry["records"])
        return groups

    def save_group(self, key: str, records: list[dict[str, Any]]) -> None:
        if self.dir is not None:
            with (self.dir / "few_shot.jsonl").open("a") as f:
                f.write(json.dumps({"key": key, "records": records}) + "\n")


def run(frozen: FrozenModel, args: argparse.Namespace, log: Log) -> dict[str, Any]:
    family = word_tasks(seed=0)
    training, held = split_family(family, args.held_out, seed=0)
    rng = random.Random(0)
    training = sorted(rng.sample(training, min(args.meta_tasks, len(training))), key=lambda t: t.name)
    held = held[: args.held_out]
    log(f"{len(family)} word tasks; meta-training on {len(training)}, held out: {', '.join(t.name for t in held)}")
    sources = [Source(i, t.name, 0, spec(), examples(t, args.meta_examples, seed=0)) for i, t in enumerate(training)]
    torch.manual_seed(0)
    state = _State(getattr(args, "state", None))
    saved = state.artifacts("meta_inits")
    if saved is None:
        learned, meta_records = learn_inits(frozen, sources, args, log)
        state.save_artifacts("meta_inits", list(learned.items()), meta_records)
        starts = learned
    else:
        starts, meta_records = dict(saved[0]), saved[1]
        log(f"meta-initialisations read back from {state.dir}")
    saved = state.artifacts("donors")
    if saved is None:
        donors = train_donors(frozen, training, args)
        state.save_artifacts("donors", donors, None)
    else:
        donors = saved[0]
    bank = [*starts.items(), *donors]
    candidates = [Candidate(index + 1, label, artifact) for index, (label, artifact) in enumerate(bank)]
    multitask_record = None
    if "multitask" in args.inits:
        saved = state.artifacts("multitask")
        if saved is None:
            artifact, multitask_record = train_multitask(frozen, sources, args, log)
            state.save_artifacts("multitask", [("multitask", artifact)], multitask_record)
        else:
            (_, artifact), multitask_record = saved[0][0], saved[1]
            log(f"multi-task start read back from {state.dir}")
        starts = {**starts, "multitask": artifact}  # a start to train from, not a candidate of auto's bank
    records: list[dict[str, Any]] = []
    done_before = state.groups()
    keys = [(task, seed, k) for task in held for seed in range(args.seeds) for k in args.shots]

    def missing(task: WordTask, seed: int, k: int) -> list[str]:
        return [init for init in args.inits if init not in done_before.get(f"{task.name}/{seed}/{k}", {})]

    total = sum(len(missing(*key)) for key in keys)
    began, trained = time.perf_counter(), 0
    log(f"{total} of {len(keys) * len(args.inits)} (task, seed, k, init) to train, the rest read back")
    for task, seed, k in keys:
        key = f"{task.name}/{seed}/{k}"
        stored = dict(done_before.get(key, {}))
        todo = missing(task, seed, k)
        if todo:
            group = few_shot(frozen, task, k, seed, todo, starts, candidates, args)
            group = [
                {"task": task.name, "seed": seed, "k": k, "init": i, **r} for i, r in zip(todo, group, strict=True)
            ]
            state.save_group(key, group)
            for record in group:
                shown = ", ".join(
                    f"{name} {value:.3f}"
                    for name, value in record.items()
                    if name.startswith("step_") and value is not None
                )
                picked = f", chose {record['chosen']}" if record["chosen"] else ""
                log(f"{task.name} seed {seed} k={k} {record['init']}: {shown}{picked}")
                stored[record["init"]] = record
            trained += len(group)
            left = (time.perf_counter() - began) / trained * (total - trained) / 60
            log(f"{trained}/{total} trained, about {left:.0f} min left")
        records.extend(stored[init] for init in args.inits)
    return {
        "meta_inits": meta_records,
        "multitask": multitask_record,
        "few_shot": records,
        "held_out": [t.name for t in held],
        "meta_tasks": [t.name for t in training],
    }
