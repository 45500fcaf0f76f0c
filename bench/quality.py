"""Quality of every prompt method on real tasks, against English prompting and PEFT, at one training budget.

    python -m bench.quality [--steps 20] [--seeds 2] [--train-size 200] [--val-size 24] [--test-size 80]
                            [--tasks sentiment,party,speaker] [--methods prompt,prefix,...,peft_prefix_tuning]
                            [--batch-size 8] [--model smollm2-135m] [--out bench/results/quality.json]

Trains promptbank's methods (prompt, prefix, deep_overwrite, around, input_mapping, input_dependent; each with
its own default hyperparameters, --options to change them) and PEFT's PromptTuning, P-tuning and PrefixTuning
(bench/quality_peft.py) on the same tasks (bench/quality_data.py: Rotten Tomatoes sentiment, the party of a
convention-speech passage, the speaker of a debate turn generated as text), the same seeded splits, steps, batch
size and validation points (step 0, every --eval-every, the end; the best checkpoint is kept), on the frozen
SmolLM2-135M-Instruct (--model gemma3-270m: the same tasks and budget on the optional Gemma 3 270M, installed by
`bash scripts/install.sh --gemma`, written to bench/results/quality-gemma3-270m.json; or a local Hugging Face
folder's path). Per task and method: held-out accuracy (exact match of the greedy text for the generation
task), mean ± sd over seeds (seed s draws split s and seeds training), trainable parameters, bytes stored
(len(artifact.to_bytes()); PEFT: its saved state dict as safetensors), seconds per training step. Baselines on the
same test sets: the majority output of the training set, a zero-shot English instruction and a few-shot prompt
(--shots solved training examples), label-scored for classification. Then every method's seed-0 prompt of the
first classification task is served from one PromptPool: each method's rows alone, relative to `prompt`'s rows
alone, and all methods' rows mixed, relative to as many `prompt` rows (bench/quality_serving.py). Tables are
printed (and written next to --out as .md); --out gets every figure as JSON.

Time on the project's 2-core CPU (measured on 1 seed of the 3 tasks, machine not quite quiet): a step at batch 8
costs 1.1-1.4 s for promptbank's methods and 1.2-2.2 s for PEFT's; one training with its validation and test
scoring 30-40 s (promptbank) and 47-77 s (PEFT: uncached scoring); the baselines of one task and seed 45-60 s.
One task and seed is about 8 minutes, so the default 3 tasks x 2 seeds takes about 50 minutes. The cost grows
about linearly in tasks x seeds x methods and, past the fixed scoring, in --steps: `--tasks sentiment --seeds 1`
takes about 8 minutes; `--steps 200 --seeds 3` (closer to what prompt tuning usually needs; 20 steps mostly shows
which method starts fastest) about 7 hours; `--methods prompt,prefix --baselines zero_shot` cuts the rest. Smoke test:
`--steps 2 --seeds 1 --train-size 16 --val-size 8 --test-size 16 --serve-rows 8` (4.2 minutes, nearly all of
it scoring and set-up; 8 minutes while other jobs shared the cores). Progress lines show the elapsed time and an
estimate of what is left.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.one_prompt import Prompt, classify, generate
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.formats.bundled import BUNDLED_MODELS, DEFAULT_MODEL, ensure_bundled_model
from app.engine.methods import load_segments, parse_config
from bench.quality_data import TASKS, Pair, QualityTask, Splits, few_shot_template
from bench.quality_peft import peft_names, train_peft
from bench.quality_report import serving_table, summarize, task_table
from bench.quality_serving import served_rates
from workers.training import train_prompt

METHODS = ["prompt", "prefix", "deep_overwrite", "around", "input_mapping", "input_dependent"]
BASELINES = ["majority", "zero_shot", "few_shot"]
PEFT_TOKENS = 20  # PEFT's virtual tokens: as many as promptbank's default prompt


def names(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of every trained method")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1: each draws its own split and init")
    parser.add_argument("--train-size", type=int, default=200)
    parser.add_argument("--val-size", type=int, default=24, help="validation examples (best checkpoint)")
    parser.add_argument("--test-size", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0: steps // 2)")
    # The three tasks its figures were measured on; "plot" (bench.tune's word-cue task) when asked for.
    parser.add_argument("--tasks", type=names, default=["sentiment", "party", "speaker"])
    parser.add_argument("--methods", type=names, default=METHODS + peft_names())
    parser.add_argument("--baselines", type=names, default=BASELINES)
    parser.add_argument("--shots", type=int, default=4, help="solved examples in the few-shot prompt")
    parser.add_argument(
        "--options",
        type=json.loads,
        default={},
        help='per-method options, e.g. \'{"prefix": {"reparameterize": true}}\'',
    )
    parser.add_argument("--serve-rows", type=int, default=32, help="held-out inputs per method in the serving run")
    parser.add_argument("--serve-repeats", type=int, default=3)
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a bundled model ({', '.join(BUNDLED_MODELS)}; converted once into --data-dir) or a local HF folder",
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=None, help="default bench/results/quality.json (-<model> for another)")
    args = parser.parse_args()
    if args.model not in BUNDLED_MODELS and not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}) nor a folder")
    if args.out is None:
        suffix = "" if args.model == DEFAULT_MODEL else "-" + Path(args.model).name
        args.out = f"bench/results/quality{suffix}.json"
    for kind, chosen, known in (
        ("tasks", args.tasks, list(TASKS)),
        ("methods", args.methods, METHODS + peft_names()),
        ("baselines", args.baselines, BASELINES),
    ):
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            parser.error(f"unknown {kind} {unknown}; choose from {','.join(known)}")
    if args.steps < 1 or args.seeds < 1:
        parser.error("--steps and --seeds must be at least 1")
    args.eval_every = args.eval_every or max(1, args.steps // 2)
    return args


def load_model(args: argparse.Namespace) -> FrozenModel:
    """The frozen model --model names: a bundled one (converted on first use) or a local folder."""
    if args.model in BUNDLED_MODELS:
        return load_frozen_model(ensure_bundled_model(Path(args.data_dir) / "models", args.model), device="cpu")
    return load_frozen_model(args.model, device="cpu")


def held_out(frozen: FrozenModel, task: QualityTask, prompt: Prompt, spec: TaskSpec, test: list[Pair]) -> float:
    """Accuracy on test of one prompt (segments, or None for the bare model) under spec's template."""
    inputs = [text for text, _ in test]
    if spec.kind == "classification":
        scores = classify(frozen, prompt, spec, inputs, batch_size=16)
        predicted = [max(row, key=row.__getitem__) for row in scores]
    else:
        predicted = generate(
            frozen, prompt, spec, inputs, max_new_tokens=task.max_new_tokens, stop=["\n"], batch_size=16
        )
    return sum(p.strip() == output for p, (_, output) in zip(predicted, test, strict=True)) / len(test)


def baseline(
    frozen: FrozenModel, task: QualityTask, name: str, splits: Splits, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Majority output, zero-shot instruction, or few-shot prompt on the test set (nothing trained)."""
    if name == "majority":
        outputs = [output for _, output in splits.train]
        top = max(sorted(set(outputs)), key=outputs.count)
        return {"accuracy": sum(output == top for _, output in splits.test) / len(splits.test), "output": top}
    template = task.instruction if name == "zero_shot" else few_shot_template(task, splits.train, args.shots, seed)
    spec = TaskSpec(task.spec.kind, template, task.spec.labels)
    return {"accuracy": held_out(frozen, task, None, spec, splits.test), "template": template}


def train_method(
    frozen: FrozenModel, task: QualityTask, name: str, splits: Splits, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Train one promptbank method; score its stored artifact (read back from bytes) on the test set."""
    options = {"steps": args.steps, "batch_size": args.batch_size, "eval_every": args.eval_every, "seed": seed}
    config = parse_config({"method": name, **options, **args.options.get(name, {})})
    result = train_prompt(frozen, task.spec, splits.train, splits.val, config)
    stored = result.artifact.to_bytes()
    artifact = Artifact.from_bytes(stored)
    accuracy = held_out(frozen, task, load_segments(frozen, artifact), task.spec, splits.test)
    return {
        "accuracy": accuracy,
        "trainable_parameters": result.metrics["trainable_parameters"],
        "bytes": len(stored),
        "seconds_per_step": result.metrics["seconds_per_step"],
        "best_step": result.best_step,
        "best_val_accuracy": result.metrics["best_val_accuracy"],
        "positions": result.positions,
        "config": config.model_dump(mode="json"),
        "artifact": artifact,  # taken out by the caller (the serving run), not part of the figures
    }


def run_peft(
    frozen: FrozenModel, task: QualityTask, name: str, splits: Splits, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Train one PEFT baseline at the same budget and score it on the test set."""
    return train_peft(
        frozen,
        name,
        task.spec,
        splits.train,
        splits.val,
        splits.test,
        steps=args.steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        seed=seed,
        num_virtual_tokens=PEFT_TOKENS,
        max_new_tokens=task.max_new_tokens,
    )


def main() -> None:
    args = parse_args()
    began = time.perf_counter()
    torch.manual_seed(0)
    frozen = load_model(args)
    tasks = [TASKS[name] for name in args.tasks]
    total = len(tasks) * args.seeds * len(args.methods)
    records: list[dict[str, Any]] = []
    served_task = next((task for task in tasks if task.spec.kind == "classification"), None)
    to_serve: dict[str, Artifact] = {}
    serve_texts: list[str] = []
    trained = 0
    model = frozen.identity.name

    def progress(message: str) -> None:
        elapsed = time.perf_counter() - began
        left = f", about {elapsed / trained * (total - trained) / 60:.0f} min left" if 0 < trained < total else ""
        print(f"[{elapsed / 60:5.1f} min{left}] {message}", flush=True)

    print(
        f"{frozen.identity.name}; torch {torch.__version__}, {torch.get_num_threads()} threads; {total} trainings",
        flush=True,
    )
    for task in tasks:
        for seed in range(args.seeds):
            splits = task.draw(args.train_size, args.val_size, args.test_size, seed)
            for name in args.baselines:
                record = {"task": task.name, "seed": seed, "name": name, "kind": "baseline", "model": model}
                started = time.perf_counter()
                record.update(attempt(baseline, frozen, task, name, splits, args, seed))
                record["wall_seconds"] = time.perf_counter() - started
                records.append(record)
                progress(f"{task.name} seed {seed} {name}: {describe(record)}")
            for name in args.methods:
                kind = "peft" if name in peft_names() else "method"
                record = {"task": task.name, "seed": seed, "name": name, "kind": kind, "model": model}
                run = run_peft if kind == "peft" else train_method
                started = time.perf_counter()
                outcome = attempt(run, frozen, task, name, splits, args, seed)
                outcome["wall_seconds"] = time.perf_counter() - started  # training, validation and test scoring
                artifact = outcome.pop("artifact", None)
                if task is served_task and seed == 0 and artifact is not None:
                    to_serve[name] = artifact
                    serve_texts = [text for text, _ in splits.test[: args.serve_rows]]
                record.update(outcome)
                records.append(record)
                trained += 1
                progress(f"{task.name} seed {seed} {name}: {describe(record)} ({trained}/{total} trainings)")
    served = None
    if served_task is not None and to_serve:
        progress(f"serving {len(to_serve)} methods' {served_task.name} prompts from one pool")
        served = served_rates(frozen, served_task.spec, to_serve, serve_texts, repeats=args.serve_repeats)
    report(args, model, records, served, served_task, time.perf_counter() - began)


def attempt(run: Callable[..., dict[str, Any]], *arguments: Any) -> dict[str, Any]:
    """run(*arguments), or {"error": ...} with the traceback printed (a method that fails gets a row saying why)."""
    try:
        return run(*arguments)
    except Exception as error:  # every failure becomes a row of the table; the run goes on
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}


def describe(record: dict[str, Any]) -> str:
    if record.get("error"):
        return f"FAILED {record['error'][:200]}"
    step = f", {record['seconds_per_step']:.2f} s/step" if record.get("seconds_per_step") is not None else ""
    return f"accuracy {record['accuracy']:.3f}{step}"


def report(
    args: argparse.Namespace,
    model: str,
    records: list[dict[str, Any]],
    served: dict[str, float] | None,
    served_task: QualityTask | None,
    seconds: float,
) -> None:
    summary = summarize(records)
    parts = [
        f"## Prompt methods on real tasks, frozen {model} ({args.steps} steps, batch {args.batch_size}, "
        f"{args.seeds} seeds)"
    ]
    for task, rows in summary.items():
        spec = TASKS[task].spec
        scored = "exact match of the greedy text" if spec.kind == "generation" else "label-scored accuracy"
        parts += [f"\n### {task} ({scored}; train {args.train_size}, test {args.test_size} per seed)\n"]
        parts.append(task_table(rows, served if served_task is not None and task == served_task.name else None))
    if served is not None and served_task is not None:
        parts += [
            f"\n### Serving: {served_task.name} prompts of seed 0, one pool, {args.serve_rows} rows per method\n",
            serving_table(served),
        ]
    parts.append(f"\nwall time {seconds / 60:.1f} min; torch {torch.__version__}, {torch.get_num_threads()} threads")
    text = "\n".join(parts)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "args": vars(args),
        "model": model,
        "records": records,
        "summary": summary,
        "served_rows_per_s": served,
    }
    figures["wall_seconds"] = seconds
    out.write_text(json.dumps(figures, indent=2, default=str))
    out.with_suffix(".md").write_text(text + "\n")
    print(f"written to {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
