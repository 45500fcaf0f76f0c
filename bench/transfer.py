"""Learning from learned prompts, measured: meta-initialisations and prompt transfer on held-out tasks, and
distillation (student vs teacher, compression, context distillation, generations).

    python -m bench.transfer [--parts meta,distill] [--seeds 3] [--out bench/results/transfer.json]
        meta:    [--meta-tasks 40] [--held-out 4] [--orders first,second,reptile] [--outer-steps 60] ...
                 [--shots 8,16,32] [--steps 50] [--report-at 20,50] [--inits meta_first,...,auto]
                 [--multitask-steps 0 (as many examples as a meta_init job draws)]
        distill: [--steps 100] [--generations 3] [--train-size 200] [--test-size 80]

The meta part is bench/transfer_meta.py (the task family: bench/transfer_data.py; the multi-task start:
bench/transfer_multitask.py), the distill part bench/transfer_distill.py; both run the worker's own job code
in-process on the frozen SmolLM2-135M-Instruct.
Tables are printed and written next to --out as .md; --out gets every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from app.engine.core.model import load_frozen_model
from app.engine.formats.bundled import ensure_bundled_model
from bench import transfer_distill, transfer_meta

INITS = ["meta_first", "meta_second", "meta_reptile", "multitask", "random", "vocab", "text", "auto"]


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _ints(text: str) -> list[int]:
    return [int(n) for n in _names(text)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=_names, default=["meta", "distill"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=10, help="meta: prompt length of every start")
    parser.add_argument("--meta-tasks", type=int, default=40)
    parser.add_argument("--meta-examples", type=int, default=64, help="examples per meta-training task")
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--orders", type=_names, default=["first", "second", "reptile"])
    parser.add_argument("--outer-steps", type=int, default=60)
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument(
        "--inner-lr",
        type=float,
        default=0.01,
        help="measured: 0.01-0.03 lowers the query loss in 3 steps, 0.1 diverges",
    )
    parser.add_argument("--outer-lr", type=float, default=0.01)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--support", type=int, default=8)
    parser.add_argument("--query", type=int, default=8)
    parser.add_argument("--donors", type=int, default=4, help="meta: single-task prompts in the bank for auto")
    parser.add_argument(
        "--multitask-steps",
        type=int,
        default=0,
        help="meta: steps (batch 8) of the multitask start; 0: the examples a meta_init job draws / 8",
    )
    parser.add_argument("--shots", type=_ints, default=[8, 16, 32])
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: 50 for meta, 100 for distill)")
    parser.add_argument("--report-at", type=_ints, default=[20, 50])
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--inits", type=_names, default=INITS)
    parser.add_argument("--test-size", type=int, default=0, help="0: 64 words (meta), 80 snippets (distill)")
    parser.add_argument("--train-size", type=int, default=200)
    parser.add_argument("--val-size", type=int, default=24)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--shots-in-context", dest="context_shots", type=int, default=4)
    parser.add_argument("--serve-rows", type=int, default=32)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/transfer.json")
    parser.add_argument(
        "--state", default=None, help="meta: a folder that keeps a run's progress, to go on after a stop"
    )
    return parser.parse_args()


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def meta_table(result: dict[str, Any], args: argparse.Namespace) -> str:
    records = result["few_shot"]
    columns = [(k, step) for k in args.shots for step in args.report_at]
    head = "| start | " + " | ".join(f"k={k}, {step} steps" for k, step in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for init in args.inits:
        cells = []
        for k, step in columns:
            values = [r[f"step_{step}"] for r in records if r["init"] == init and r["k"] == k]
            cells.append(_spread([v for v in values if v is not None]))
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    lines.extend(["", *paired_against_text(records, args)])
    chosen = [r["chosen"] for r in records if r["init"] == "auto"]
    picks = {name: chosen.count(name) for name in sorted(set(chosen))}
    lines.append("")
    lines.append("auto chose: " + ", ".join(f"{name} ({count}x)" for name, count in picks.items()))
    lines.append("")
    lines.append(
        "| order | query loss before K steps, at start | after K steps: at start -> best | outer s/step | "
        "mean meta-gradient norm | clipped steps |"
    )
    lines.append("|---|---:|---|---:|---:|---:|")
    for r in result["meta_inits"]:
        lines.append(
            f"| {r['order']} | {r['evaluations'][0]['query_loss_before']:.3f} | {r['init_val_loss']:.3f} -> "
            f"{r['best_val_loss']:.3f} (step {r['best_step']}) | {r['seconds_per_step']:.1f} | "
            f"{r['mean_meta_gradient_norm']:.3f} | {r['clipped_steps']} |"
        )
    m = result.get("multitask")
    if m:
        lines.append("")
        lines.append(
            f"multitask: {m['steps']} steps at batch {m['batch_size']} ({m['examples_seen']:,} examples seen; each "
            f"meta_init job drew {m['examples_drawn_by_meta_learning']:,}) from {m['examples']:,} examples of "
            f"{m['tasks']} tasks ({m['val_size']} of them held out for validation), {m['seconds'] / 60:.1f} min; "
            f"validation accuracy {m['init_val_accuracy']:.3f} -> {m['best_val_accuracy']:.3f} "
            f"(step {m['best_step']}), loss {m['init_val_loss']:.3f} -> {m['best_val_loss']:.3f}"
        )
    return "\n".join(lines)


def paired_against_text(records: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Each start minus the text init on the same task, seed and k (the issue's target: meta-init >= text + 0.05 at
    k = 16 after 20 steps), with how often it was better."""
    text = {(r["task"], r["seed"], r["k"]): r for r in records if r["init"] == "text"}
    lines = []
    for k in args.shots:
        for step in args.report_at:
            parts = []
            for init in args.inits:
                if init == "text":
                    continue
                pairs = [
                    (r[f"step_{step}"], text[(r["task"], r["seed"], k)][f"step_{step}"])
                    for r in records
                    if r["init"] == init and r["k"] == k and (r["task"], r["seed"], k) in text
                ]
                pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
                if pairs:
                    gain = statistics.mean(a - b for a, b in pairs)
                    wins = sum(a > b for a, b in pairs)
                    parts.append(f"{init} {gain:+.3f} ({wins}/{len(pairs)} better)")
            lines.append(f"- k={k}, {step} steps, against text: " + ", ".join(parts))
    return lines


def distill_table(result: dict[str, Any]) -> str:
    records = result["records"]
    names = list(dict.fromkeys(r["name"] for r in records))
    rates: dict[str, list[float]] = {}
    for seed_rates in result["served_rows_per_second"]:
        for name, rate in seed_rates.items():
            rates.setdefault(name, []).append(rate)
    lines = ["| prompt | test accuracy | bytes stored | served rows/s |", "|---|---:|---:|---:|"]
    for name in names:
        rows = [r for r in records if r["name"] == name]
        size = f"{rows[0]['bytes']:,}" if "bytes" in rows[0] else "-"
        rate = f"{statistics.median(rates[name]):.1f}" if name in rates else "-"
        lines.append(f"| {name} | {_spread([r['accuracy'] for r in rows])} | {size} | {rate} |")
    lines.append("")
    lines.append("Validation accuracy by generation (the kept student is the best):")
    for r in records:
        if r["name"] == "prompt (20) generations":
            shown = ", ".join(f"{g} {s['val_accuracy']:.3f}" for g, s in r["generations"].items())
            lines.append(f"- seed {r['seed']}: {shown}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - began) / 60:6.1f} min] {message}", flush=True)

    torch.manual_seed(0)
    frozen = load_frozen_model(ensure_bundled_model(Path(args.data_dir) / "models"), device="cpu")
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; parts {', '.join(args.parts)}")
    figures: dict[str, Any] = {"args": vars(args)}
    report = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after each part, before any table is made: a report bug never loses an hour's figures
        figures["minutes"] = (time.perf_counter() - began) / 60
        out.write_text(json.dumps(figures, indent=2, default=str))

    if "meta" in args.parts:
        meta_args = argparse.Namespace(**{**vars(args), "steps": args.steps or 50, "test_size": args.test_size or 64})
        figures["meta"] = transfer_meta.run(frozen, meta_args, log)
        save()
        report.append("## Meta-initialisation and prompt transfer\n\n" + meta_table(figures["meta"], meta_args))
    if "distill" in args.parts:
        distill_args = argparse.Namespace(
            **{**vars(args), "steps": args.steps or 100, "test_size": args.test_size or 80, "shots": args.context_shots}
        )
        figures["distill"] = transfer_distill.run(frozen, distill_args, log)
        save()
        report.append("## Distillation\n\n" + distill_table(figures["distill"]))
    save()
    text = "\n\n".join(report)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    log(f"done; figures in {out}")


if __name__ == "__main__":
    main()
