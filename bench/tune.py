"""The tune job against what a user would pick instead, on the quality benchmark's classification tasks.

Per task and seed (its own split, `bench/quality_data.py`): `prompt` at its defaults (200 steps), the tune job's
own code (`workers/jobs/tune`, a budget of --budget steps over all trials), TF-IDF + logistic regression and a
logistic-regression probe on the frozen model's mean-pooled hidden states (scikit-learn; C chosen on the
validation split). Every score is accuracy on the test split, which nothing selects on.

    python -m bench.tune --tasks sentiment,party --seeds 0,1,2 --budget 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from app.engine.core.mixed import Row, state_rows
from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.prompts import single
from app.engine.core.segments import Segments
from app.engine.formats.bundled import ensure_bundled_model
from app.engine.methods import load_segments, parse_config
from bench.quality import held_out
from bench.quality_data import TASKS, Pair, QualityTask
from bench.transfer_jobs import job_context
from workers.jobs import KINDS
from workers.jobs.tune.options import SearchSpace, StepBudget, TuneOptions
from workers.training import train_prompt

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def _logistic(train_x: Any, train_y: list[str], val_x: Any, val_y: list[str], test_x: Any) -> tuple[list[str], float]:
    """Predictions on test of the logistic regression whose C scored best on validation; and that C."""
    from sklearn.linear_model import LogisticRegression

    best: tuple[float, float, Any] | None = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y)
        score = float((model.predict(val_x) == val_y).mean())
        if best is None or score > best[0]:
            best = (score, c, model)
    assert best is not None
    return list(best[2].predict(test_x)), best[1]


def tfidf(train: list[Pair], val: list[Pair], test: list[Pair]) -> tuple[float, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([t for t, _ in train])
    predicted, c = _logistic(
        vectorizer.transform([t for t, _ in train]),
        [y for _, y in train],
        vectorizer.transform([t for t, _ in val]),
        [y for _, y in val],
        vectorizer.transform([t for t, _ in test]),
    )
    return sum(p == y for p, (_, y) in zip(predicted, test, strict=True)) / len(test), c


def probe(frozen: FrozenModel, task: QualityTask, train: list[Pair], val: list[Pair], test: list[Pair]) -> float:
    """A logistic regression on the frozen model's mean-pooled final hidden states of the rendered inputs."""
    bare = single(frozen, Segments())

    def features(pairs: list[Pair]) -> Any:
        rows = [Row(0, task.spec, text, pooling="mean") for text, _ in pairs]
        with torch.no_grad():
            return torch.stack(state_rows(frozen, bare, rows)).float().numpy()

    predicted, _ = _logistic(features(train), [y for _, y in train], features(val), [y for _, y in val], features(test))
    return sum(p == y for p, (_, y) in zip(predicted, test, strict=True)) / len(test)


def run_one(frozen: FrozenModel, task: QualityTask, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    splits = task.draw(args.train, args.val, args.test, seed)
    record: dict[str, Any] = {"task": task.name, "seed": seed}
    started = time.perf_counter()
    default = parse_config({"method": "prompt", "seed": seed})
    trained = train_prompt(frozen, task.spec, splits.train, splits.val, default)
    record["prompt_default"] = held_out(frozen, task, load_segments(frozen, trained.artifact), task.spec, splits.test)
    record["prompt_default_minutes"] = (time.perf_counter() - started) / 60
    print(f"[{task.name} seed {seed}] prompt at defaults: {record['prompt_default']:.3f}", flush=True)
    started = time.perf_counter()
    search = SearchSpace(
        methods=args.methods.split(",") if args.methods != "all" else "all", steps_per_trial=args.steps_per_trial
    )
    options = TuneOptions(budget=StepBudget(steps=args.budget), search=search, seed=seed)
    ctx = job_context(frozen, task.spec, default, options, list(splits.train), list(splits.val))
    ctx.event = lambda kind, message, data: print(f"[{task.name} seed {seed}] {kind}: {message}", flush=True)
    result = KINDS["tune"].run(ctx)
    record["tune"] = held_out(frozen, task, load_segments(frozen, result.artifact), task.spec, splits.test)
    record["tune_minutes"] = (time.perf_counter() - started) / 60
    record["tune_method"] = result.hyperparameters["method"]
    record["tune_trials"] = result.metrics["trials"]
    record["tfidf_logreg"], record["tfidf_c"] = tfidf(splits.train, splits.val, splits.test)
    record["probe_logreg"] = probe(frozen, task, splits.train, splits.val, splits.test)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sentiment,party")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--budget", type=int, default=1000, help="tune: optimizer steps over all trials")
    parser.add_argument("--steps-per-trial", type=int, default=200)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/tune.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    frozen = load_frozen_model(ensure_bundled_model(Path(args.data_dir) / "models"), device="cpu")
    records = []
    for name in args.tasks.split(","):
        for seed in map(int, args.seeds.split(",")):
            record = run_one(frozen, TASKS[name], seed, args)
            records.append(record)
            print(json.dumps(record), flush=True)
    print("\n| task | seed | prompt (defaults) | tune | tune's method | TF-IDF + LR | probe + LR | tune minutes |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for r in records:
        print(
            f"| {r['task']} | {r['seed']} | {r['prompt_default']:.3f} | {r['tune']:.3f} | {r['tune_method']} | "
            f"{r['tfidf_logreg']:.3f} | {r['probe_logreg']:.3f} | {r['tune_minutes']:.1f} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "records": records}, indent=2))


if __name__ == "__main__":
    main()
