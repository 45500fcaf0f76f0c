"""What a stoppable job costs: a training job on the frozen model with and without `workers.interrupt.interruptible`
(the check a worker runs between torch operations so that a stop ends a pass within moments).

    python -m bench.interrupt_cost [--rounds 4] [--steps 10] [--batch-size 8] [--out bench/results/interrupt_cost.json]

One word task of bench/transfer_data.py (48 training words, 16 validation), prompt tuning with 10 tokens; each round
trains the same job twice, once plain and once inside interruptible (a check that never fires), in alternating
order. Figures: each run's seconds per step from its own metrics and its wall time (setup, steps, validation), the
median over rounds, and the ratio. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from app.engine.core.model import load_frozen_model
from app.engine.formats.bundled import ensure_bundled_model
from app.engine.methods import parse_config
from bench.transfer_data import examples, spec, word_tasks
from workers.interrupt import interruptible
from workers.training import TrainJob, TrainResult, train_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/interrupt_cost.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    frozen = load_frozen_model(ensure_bundled_model(Path(args.data_dir) / "models"), device="cpu")
    task = word_tasks(seed=0)[0]
    pairs = examples(task, 64, seed=0)
    config = parse_config(
        {
            "method": "prompt",
            "num_virtual_tokens": 10,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "eval_every": args.steps,
            "init": "text",
            "init_text": task.question,
            "seed": 0,
        }
    )
    job = TrainJob(spec(), pairs[:48], pairs[48:], config)

    def run(checked: bool) -> tuple[float, float, TrainResult]:
        started = time.perf_counter()
        with interruptible(lambda: None) if checked else nullcontext():
            (outcome,) = train_prompts(frozen, [job])
        if isinstance(outcome, BaseException):
            raise outcome
        return float(outcome.metrics["seconds_per_step"] or 0.0), time.perf_counter() - started, outcome

    run(False)  # warm-up: first calls allocate and tune
    figures: dict[str, list[float]] = {"plain_step": [], "checked_step": [], "plain_wall": [], "checked_wall": []}
    for number in range(args.rounds):
        order = (False, True) if number % 2 == 0 else (True, False)
        results = {}
        for checked in order:
            step, wall, result = run(checked)
            name = "checked" if checked else "plain"
            figures[f"{name}_step"].append(step)
            figures[f"{name}_wall"].append(wall)
            results[name] = result
        same = all(
            torch.equal(results["plain"].artifact.tensors[n], results["checked"].artifact.tensors[n])
            for n in results["plain"].artifact.tensors
        )
        print(f"round {number}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in figures.items()) + f"; same prompt {same}")
    medians = {name: statistics.median(values) for name, values in figures.items()}
    summary = {
        "args": vars(args),
        "torch_threads": torch.get_num_threads(),
        "runs": figures,
        "median": medians,
        "step_ratio": medians["checked_step"] / medians["plain_step"],
        "wall_ratio": medians["checked_wall"] / medians["plain_wall"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(
        f"\nseconds per step: plain {medians['plain_step']:.3f}, inside interruptible {medians['checked_step']:.3f} "
        f"({summary['step_ratio']:.3f}x); job wall: plain {medians['plain_wall']:.2f} s, checked "
        f"{medians['checked_wall']:.2f} s ({summary['wall_ratio']:.3f}x)"
    )


if __name__ == "__main__":
    main()
