"""The tune job against every single method at its defaults, PEFT's best and what a user might pick instead.

Per task and seed (its own split, bench/quality_data.py; seed s draws split s and seeds the training) every config
is one cell, scored by accuracy on the test split, which nothing selects on:
- every registered method (app/engine/methods) at its defaults, --single-steps steps (200: the defaults);
- PEFT's PromptTuning, P-tuning and PrefixTuning as bench.quality runs them (bench/quality_peft.py: 20 virtual
  tokens, the same steps, batch and schedule); the report's "PEFT's best" is the one best on validation;
- tune: the tune job's own code (workers/jobs/tune) at a budget of --budget optimizer steps over all trials,
  with `ensemble: k` (--ensemble). One search gives three rows: its best trial (what the job stores), the
  ensemble of the k best finished trials (their label probabilities averaged, as the task's default ensemble is
  served) and one prompt distilled from that ensemble (the distill job at its defaults, the best trial's config
  as the student: what `distill: true` runs after the same search, whose steps it adds);
- TF-IDF + logistic regression and a logistic-regression probe on the frozen model's mean-pooled hidden states
  (bench/tune_baselines.py; scikit-learn, C chosen on validation).

How each cell trains is bench/tune_cells.py. Every finished cell is appended to --out (bench/runs/tune/
results.jsonl, committed with the figures it holds) as one JSON line: test accuracy, wall seconds, and for tune
the trials finished / pruned / failed, each trial's method and the methods kept. A rerun with the same settings
skips it, so the table can be filled across sessions; a failed cell is recorded and runs again. --report prints
the markdown table of the cells of these settings (bench/tune_report.py) without training anything; --only picks
configs for both.

    python -m bench.tune                       # the issue's table: 3 tasks x seeds 0,1,2, budget 1000 (hours)
    python -m bench.tune --only tune,prompt,classic --seeds 0
    python -m bench.tune --report
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.formats.bundled import ensure_bundled_model
from app.engine.methods import REGISTRY
from bench.quality_data import TASKS, Splits
from bench.quality_peft import peft_names
from bench.tune_cells import DEFAULTS, RUNNERS
from bench.tune_report import cell_key, read_records, report


def configs() -> dict[str, str]:
    """Every config's name and kind, in the order cells run (the cheap ones first)."""
    return {
        "tfidf_logreg": "classic",
        "probe_logreg": "classic",
        **{name: "single" for name in sorted(REGISTRY, key=lambda n: (n != "prompt", n))},
        **{name: "peft" for name in peft_names()},
        "tune": "tune",
    }


def settings(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """What a cell of this kind ran with: a cell of other settings is another cell."""
    chosen: dict[str, Any] = {"train": args.train, "val": args.val, "test": args.test}
    if kind in ("single", "peft"):
        chosen["steps"] = args.single_steps
    if kind == "tune":
        chosen.update(budget=args.budget, steps_per_trial=args.steps_per_trial, methods=args.methods)
        chosen["ensemble"] = args.ensemble
    return chosen


def names(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=names, default=["sentiment", "party", "plot"])
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in names(text)], default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100, help="the validation split every config selects on")
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--single-steps", type=int, default=DEFAULTS.steps, help="single methods' and PEFT's steps")
    parser.add_argument("--budget", type=int, default=1000, help="tune: optimizer steps over all trials")
    parser.add_argument("--steps-per-trial", type=int, default=200)
    parser.add_argument("--methods", default="all", help="tune's search space: all, or methods with commas")
    parser.add_argument("--ensemble", type=int, default=3, help="tune's ensemble: k (2 to 8; 0: none, no distill)")
    groups = "single, peft, classic"
    parser.add_argument("--only", type=names, default=None, help=f"configs or groups ({groups}) to run or report")
    parser.add_argument("--out", default="bench/runs/tune/results.jsonl", help="the results file, one cell a line")
    parser.add_argument("--report", action="store_true", help="print the table of --out's cells; train nothing")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {','.join(TASKS)}")
    known = configs()
    wanted = args.only or list(known)
    chosen = [n for n in known if n in wanted or known[n] in wanted]
    unknown = sorted(set(wanted) - set(known) - set(known.values()))
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {','.join(known)} or the groups {groups}")
    args.configs = chosen
    if args.ensemble and not 2 <= args.ensemble <= 8:
        parser.error("--ensemble is 2 to 8, or 0 for none")
    return args


def key(args: argparse.Namespace, task: str, seed: int, config: str) -> str:
    return cell_key({"task": task, "seed": seed, "config": config, "settings": settings(args, configs()[config])})


def current(args: argparse.Namespace, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The cells of these settings, tasks, seeds and configs, by key (a later line of a key wins: a rerun)."""
    wanted = {key(args, t, s, c) for t in args.tasks for s in args.seeds for c in args.configs}
    return {k: r for r in records if (k := cell_key(r)) in wanted}


def title(args: argparse.Namespace) -> str:
    return (
        f"bench.tune: {args.train} training, {args.val} validation, {args.test} test examples per task and seed; "
        f"single methods and PEFT {args.single_steps} steps; tune {args.budget} steps, {args.steps_per_trial} per "
        f"trial, ensemble of {args.ensemble or 'none'}"
    )


def commit() -> str | None:
    """The checkout's commit, marked when it has uncommitted changes (a cell says what code made it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None, frozen: FrozenModel | None = None) -> str:
    """Run the cells not yet in --out (none with --report) and print the report; frozen: the bundled model."""
    args = parse_args(argv)
    out = Path(args.out)
    done = current(args, read_records(out))
    if not args.report:
        run(args, out, {k for k, record in done.items() if not record.get("error")}, frozen)
        done = current(args, read_records(out))
    text = report(list(done.values()), args.tasks, title(args))
    print("\n" + text)
    return text


def run(args: argparse.Namespace, out: Path, done: set[str], frozen: FrozenModel | None) -> None:
    """Run every cell of these settings not in done, appending each to out as it finishes."""
    kinds = configs()
    cells = [(t, s, c) for s in args.seeds for t in args.tasks for c in args.configs]  # a whole seed first
    todo = [cell for cell in cells if key(args, *cell) not in done]
    print(f"{len(todo)} of {len(cells)} cells to run, the rest read back from {out}", flush=True)
    if not todo:
        return
    torch.manual_seed(0)
    if frozen is None:
        frozen = load_frozen_model(ensure_bundled_model(Path(args.data_dir) / "models"), device="cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    code, began = commit(), time.perf_counter()
    splits: dict[tuple[str, int], Splits] = {}
    for number, (task_name, seed, config) in enumerate(todo, start=1):
        task, kind = TASKS[task_name], kinds[config]
        if (task_name, seed) not in splits:
            splits[(task_name, seed)] = task.draw(args.train, args.val, args.test, seed)
        record: dict[str, Any] = {"task": task_name, "seed": seed, "config": config, "kind": kind}
        record["settings"] = settings(args, kind)
        started = time.perf_counter()
        try:
            record.update(RUNNERS[kind](frozen, task, config, splits[(task_name, seed)], args, seed))
        except Exception as error:  # the cell is recorded as failed and runs again next time; the others go on
            traceback.print_exc()
            record["error"] = f"{type(error).__name__}: {error}"
        record.setdefault("wall_seconds", time.perf_counter() - started)
        record["commit"] = code
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        elapsed = (time.perf_counter() - began) / 60
        shown = f"FAILED {record['error'][:200]}" if record.get("error") else f"accuracy {record['accuracy']:.3f}"
        print(f"[{elapsed:6.1f} min, {number}/{len(todo)}] {task_name} seed {seed} {config}: {shown}", flush=True)


if __name__ == "__main__":
    main()
