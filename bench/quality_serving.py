"""Served throughput of every method's trained prompt, side by side in one prompt source.

All methods' artifacts sit in one app.engine.core.prompts.Prompts, each made by app.engine.methods.load_segments
(what the server reads for a prompt its pool lacks). The same held-out inputs are served through
mixed.classify_rows as: the rows of each method alone (prompt ids of that method only), all methods' rows mixed in
one call, and as many rows of `prompt` alone as the mixed call holds (larger calls fill larger passes, so the mixed
call is compared with that). Timed rounds go round-robin over the configurations so a noisy neighbour slows them
alike; each figure is the median rows/s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

from app.engine.core.mixed import Row, classify_rows
from app.engine.core.model import FrozenModel
from app.engine.core.prompts import Prompts
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods import load_segments

MIXED = "all methods mixed"
PROMPT_AS_MANY = "prompt only, as many rows as mixed"


def served_rates(
    frozen: FrozenModel,
    spec: TaskSpec,
    artifacts: dict[str, Artifact],
    texts: list[str],
    *,
    repeats: int,
    max_batch_tokens: int = 4096,
) -> dict[str, float]:
    """Median rows/s per method (its rows alone), for all methods' rows mixed, and for as many `prompt` rows."""
    names = list(artifacts)
    by_id = {index: artifacts[name] for index, name in enumerate(names)}
    pool = Prompts(frozen, lambda prompt_id: load_segments(frozen, by_id[prompt_id]))
    rows = {name: [Row(index, spec, text) for text in texts] for index, name in enumerate(names)}
    # Interleaved, so that every pass of the mixed call holds rows of several methods.
    mixed = [rows[name][i] for i in range(len(texts)) for name in names]
    batches = {**rows, MIXED: mixed}
    if "prompt" in rows:
        batches[PROMPT_AS_MANY] = rows["prompt"] * len(names)
    work: dict[str, Callable[[], object]] = {
        name: partial(classify_rows, frozen, pool, chosen, max_batch_tokens=max_batch_tokens)
        for name, chosen in batches.items()
    }
    counts = {name: len(chosen) for name, chosen in batches.items()}
    for run in work.values():
        run()  # warm-up: resolves every prompt into the pool once (the timed rounds are all hits)
    times: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(repeats):
        for name, run in work.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: counts[name] / statistics.median(spent) for name, spent in times.items()}
