"""What one forward pass over cached prompts costs, and which per-pass overhead the engine's batch cutting should use.

    python -m bench.forward_cost [--repeats 3] [--rows 32]

Part 1 times app.engine.core.forward.forward_rows on the bundled SmolLM2 for batches of B rows of Q tokens
(B in 1..32, Q in 8..64, one 20-vector prompt) and fits time = c0 + c1 * B * Q by least squares: c0 / c1 is the
fixed cost of a pass in query positions. Part 2 scores --rows Rotten Tomatoes snippets of mixed lengths (64
tasks) with mixed.classify_rows under several values of that overhead, next to the model on the inputs alone
(16 rows per sorted batch), and prints the median time of each and how the rows were cut.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from app.engine.core import mixed
from app.engine.core.forward import Query, forward_rows
from app.engine.core.mixed import Row, classify_rows
from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.prompts import Prompts
from app.engine.core.segments import Segments, resolve
from bench.serving_runners import RawRunner
from bench.serving_workload import SINGLE, make_requests, random_prompts, snippets


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def fit_pass_cost(frozen: FrozenModel, repeats: int) -> None:
    served = resolve(frozen, [Segments(prefix=torch.randn(20, frozen.hidden_size) * 0.02)])[0]
    points: list[tuple[int, float]] = []
    print("B   Q   ms/pass  ms/position")
    for rows in (1, 2, 4, 8, 16, 32):
        for width in (8, 16, 32, 64):
            queries = [Query(list(range(100, 100 + width))) for _ in range(rows)]
            seconds = median_seconds(partial(forward_rows, frozen, [served] * rows, queries), repeats)
            points.append((rows * width, seconds))
            print(f"{rows:<3} {width:<3} {seconds * 1000:8.1f}  {seconds * 1000 / (rows * width):.2f}")
    design = torch.tensor([[1.0, float(positions)] for positions, _ in points], dtype=torch.float64)
    times = torch.tensor([[seconds] for _, seconds in points], dtype=torch.float64)
    c0, c1 = torch.linalg.lstsq(design, times).solution.flatten().tolist()
    print(f"fit: {c0 * 1000:.1f} ms per pass + {c1 * 1000:.3f} ms per position -> overhead {c0 / c1:.0f} positions")


def sweep_overhead(frozen: FrozenModel, rows: int, repeats: int) -> None:
    prompts = random_prompts(frozen, 64, 20)
    requests = make_requests(frozen, SINGLE, snippets(frozen, rows, 48), rows, 64)
    batch = [Row(request.task, SINGLE, request.text) for request in requests]
    pool = Prompts(frozen, lambda prompt_id: Segments(prefix=prompts[prompt_id]))
    raw = RawRunner(frozen, None, SINGLE, 16)
    default = mixed.forward_overhead
    cuts: dict[int, list[int]] = {}
    partition = mixed._partition

    def recorded(*args: object) -> list[list[int]]:
        groups = partition(*args)  # type: ignore[arg-type]
        cuts[int(args[-1])] = [len(group) for group in groups]  # type: ignore[call-overload]
        return groups

    def engine(overhead: int) -> Callable[[], object]:
        def run() -> object:
            mixed.forward_overhead = lambda _: overhead
            return classify_rows(frozen, pool, batch)

        return run

    mixed._partition = recorded
    try:
        figures = {"inputs alone, 16/batch": median_seconds(lambda: list(raw.serve(requests)), repeats)}
        for overhead in (16, 32, 64, 128, 256, 512):
            figures[f"engine, overhead {overhead}"] = median_seconds(engine(overhead), repeats)
    finally:
        mixed.forward_overhead, mixed._partition = default, partition
    floor = figures["inputs alone, 16/batch"]
    print(f"\n{rows} rows, 64 tasks, widths {min(r.tokens for r in requests)}-{max(r.tokens for r in requests)} tokens")
    for name, seconds in figures.items():
        overhead = int(name.rsplit(" ", 1)[1]) if name.startswith("engine") else None
        cut = f"  rows per pass {cuts[overhead]}" if overhead is not None else ""
        print(f"{name:<24} {seconds * 1000:7.0f} ms  inputs-alone / this {floor / seconds:.2f}{cut}")
    print(f"default overhead on this device: {default(frozen)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    frozen = load_frozen_model(Path(args.data_dir) / "models" / "SmolLM2-135M-Instruct", device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    fit_pass_cost(frozen, args.repeats)
    sweep_overhead(frozen, args.rows, args.repeats)


if __name__ == "__main__":
    main()
