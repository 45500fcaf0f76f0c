"""Throughput of mixed-task classification over pooled prompt keys/values against the uncached paths.

    python -m bench.mixed_engine [--rows 64] [--repeats 3] [--threads 1]

64 Rotten Tomatoes snippets of 20-40 tokens, each served by its own random 20-vector prompt (64 tasks), scored
on the bundled SmolLM2 by: (1) the uncached forward with each row's prompt prepended as input embeddings, 16 rows
per batch (bench.serving_workload.uncached_hidden), (1b) inference.classify once per task, the path a single-task
server takes, (2) the model on the inputs alone, no prompt, 16 per batch, a floor no prompt method
can beat, (3) mixed.classify_rows with a warm pool and (3c) with a cold one (the 64 prompt forwards included),
and (4) classify_rows with multi-token labels. Prints rows/s, the median of the repeats, and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.engine.core.mixed import Row, classify_rows
from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.one_prompt import classify
from app.engine.core.prompts import Prompts
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec, encode_example, label_token_ids
from app.engine.formats.bundled import ensure_bundled_model
from bench.data import balanced_splits
from bench.serving_workload import uncached_hidden

TEMPLATE = "Review: {input}\nSentiment:"
SINGLE = TaskSpec("classification", TEMPLATE, ("positive", "negative"))
MULTI = TaskSpec("classification", TEMPLATE, ("very positive", "mildly negative", "not sure at all"))


def sentences(frozen: FrozenModel, count: int) -> list[str]:
    """Held-out snippets whose rendered row is 20-40 tokens."""
    _, test = balanced_splits(0, 2000)
    fitting = [
        ex["input"] for ex in test if 20 <= len(encode_example(frozen, SINGLE, ex["input"], None).input_ids) <= 40
    ]
    if len(fitting) < count:
        raise SystemExit(f"only {len(fitting)} snippets of 20-40 tokens; ask for fewer rows.")
    return fitting[:count]


def uncached_batches(
    frozen: FrozenModel, prompts: list[torch.Tensor | None], texts: list[str], batch_size: int = 16
) -> None:
    """Single-token label scores, batch_size rows per left-padded batch, each row's prompt (or none) prepended."""
    label_ids = [ids[0] for ids in label_token_ids(frozen, SINGLE)]
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            rows = [encode_example(frozen, SINGLE, text, None).input_ids for text in texts[start : start + batch_size]]
            last = uncached_hidden(frozen, prompts[start : start + batch_size], rows)[:, -1]
            torch.softmax(torch.log_softmax(frozen.logits(last).float(), dim=-1)[:, label_ids], dim=-1).tolist()


def rows_per_second(methods: dict[str, Callable[[], object]], rows: int, repeats: int) -> dict[str, float]:
    """Median rows/s of each method; repeats go round-robin so a noisy neighbour slows every method alike."""
    for work in methods.values():
        work()  # warm-up: first-call allocations, lazy inits, and (for a warm pool) the prompt forwards
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, work in methods.items():
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    return {name: rows / statistics.median(spent) for name, spent in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        # One thread is the steadier figure on a shared machine: OpenMP workers spin when a neighbour holds a core.
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frozen = load_frozen_model(ensure_bundled_model(Path("data/models")), device=args.device)
    texts = sentences(frozen, args.rows)
    # SmolLM2's token embeddings have a standard deviation near 0.1; random prompts of that scale look like text.
    scale = float(frozen.embedding_matrix().float().std())
    prompts = [torch.randn(args.prompt_length, frozen.hidden_size) * scale for _ in texts]

    def load(prompt_id: int) -> Segments:
        return Segments(prefix=prompts[prompt_id])

    single_rows = [Row(i, SINGLE, text) for i, text in enumerate(texts)]
    multi_rows = [Row(i, MULTI, text) for i, text in enumerate(texts)]
    warm = Prompts(frozen, load)
    n = len(texts)
    print(
        f"{n} rows of 20-40 tokens, {n} distinct prompts of {args.prompt_length} vectors, {args.device}, "
        f"torch threads {torch.get_num_threads()}; median of {args.repeats}"
    )
    print(f"multi-token labels: {[len(ids) for ids in label_token_ids(frozen, MULTI)]} tokens")
    small = 16 * (args.prompt_length + 40)  # a token budget that holds about 16 rows, like (1) and (2)
    methods: dict[str, tuple[str, Callable[[], object]]] = {
        "1": ("uncached, prompt prepended, 16/batch", lambda: uncached_batches(frozen, list(prompts), texts)),
        "1b": (
            "inference.classify once per task",
            lambda: [classify(frozen, prompt, SINGLE, [text]) for prompt, text in zip(prompts, texts, strict=True)],
        ),
        "2": ("no prompt, inputs alone, 16/batch", lambda: uncached_batches(frozen, [None] * n, texts)),
        "3": ("classify_rows, warm pool", lambda: classify_rows(frozen, warm, single_rows)),
        "3s": (
            f"classify_rows, warm, max_batch_tokens={small}",
            lambda: classify_rows(frozen, warm, single_rows, max_batch_tokens=small),
        ),
        "3c": (
            "classify_rows, cold pool (prompt KV included)",
            lambda: classify_rows(frozen, Prompts(frozen, load), single_rows),
        ),
        "4": ("classify_rows, multi-token labels, warm", lambda: classify_rows(frozen, warm, multi_rows)),
    }
    rate = rows_per_second({code: work for code, (_, work) in methods.items()}, n, args.repeats)
    for code, (name, _) in methods.items():
        print(f"({code:>2}) {name:<48} {rate[code]:8.1f} rows/s")
    for top, bottom in [("3", "1"), ("3s", "1"), ("3", "1b"), ("3", "2"), ("3s", "2"), ("3c", "1"), ("4", "3")]:
        print(f"({top}) / ({bottom}): {rate[top] / rate[bottom]:.2f}x")
    print(f"pool: {warm.stats()}")


if __name__ == "__main__":
    main()
