"""The multi-task start beside the meta-initialisations (the `multitask` init of `python -m bench.transfer`).

The baseline the meta-learning literature compares MAML with: one prompt trained by ordinary prompt tuning (a train
job's own loop, workers.training) on the union of the meta-training tasks' examples, the same examples the
meta_init jobs sample from, from the same text init ("Read the input and answer the question."). Validation is the
train job's default: a seeded 10% of the union held out (at most 200 examples), the best prompt by its
accuracy kept.

Budget: as many examples as each meta_init job draws, outer steps x meta-batch x (support + query) =
60 x 4 x (8 + 8) = 3,840 at the defaults, i.e. 480 steps at batch 8 (--multitask-steps overrides it). In passes it
is less than meta-learning spends: first order computes K x support + query = 32 example-gradients per sampled task
(7,680 in all), Reptile 3 x 16 = 48 (11,520), second order first order's plus the backward through the K steps.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from app.engine.core.model import FrozenModel
from app.engine.formats.artifact import Artifact
from app.engine.methods.prompt import PromptConfig
from bench.transfer_data import spec
from workers.inputs import Source
from workers.jobs.meta_init.algorithm import DEFAULT_META_INIT_TEXT
from workers.training import EvalReport, train_prompt

BATCH_SIZE = 8


def examples_drawn_by_meta_learning(args: argparse.Namespace) -> int:
    """The examples a meta_init job samples over its run: support and query sets of every task of every step."""
    return args.outer_steps * args.meta_batch * (args.support + args.query)


def multitask_steps(args: argparse.Namespace) -> int:
    """--multitask-steps, or the examples meta-learning draws, at batch 8."""
    return getattr(args, "multitask_steps", 0) or max(1, examples_drawn_by_meta_learning(args) // BATCH_SIZE)


def train_multitask(
    frozen: FrozenModel, sources: list[Source], args: argparse.Namespace, log: Callable[[str], None]
) -> tuple[Artifact, dict[str, Any]]:
    """One prompt trained on every meta-training task's examples at once; (its best artifact, a record of the run)."""
    union = [pair for source in sources for pair in source.examples]
    steps = multitask_steps(args)
    config = PromptConfig(
        num_virtual_tokens=args.tokens,
        init_text=DEFAULT_META_INIT_TEXT,
        steps=steps,
        batch_size=BATCH_SIZE,
        eval_every=max(1, steps // 4),  # as often as the meta_init jobs evaluate (outer steps // 4)
        seed=0,
    )
    started = time.perf_counter()

    def on_eval(report: EvalReport) -> None:
        accuracy = f"{report.val_accuracy:.3f}" if report.val_accuracy is not None else "-"
        log(f"multitask step {report.step}/{steps}: validation loss {report.val_loss:.3f}, accuracy {accuracy}")

    result = train_prompt(frozen, spec(), union, None, config, on_eval=on_eval)
    record = {
        "tasks": len(sources),
        "examples": len(union),
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "examples_seen": steps * BATCH_SIZE,
        "examples_drawn_by_meta_learning": examples_drawn_by_meta_learning(args),
        "learning_rate": config.learning_rate,
        "seconds": time.perf_counter() - started,
        **result.metrics,
    }
    return result.artifact, record
