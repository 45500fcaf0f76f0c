"""The multi-task start beside the meta-initialisations (the `multitask` init of `python -m bench.transfer`).

The baseline the meta-learning literature compares MAML with: one prompt trained by ordinary prompt tuning (a train
job's own loop, workers.training) on the union of the meta-training tasks' examples, the same examples the
meta_init jobs sample from, from the same text init ("Read the input and answer the question."). Validation is the
train job's default: a seeded 10% of the union held out, the best prompt by its accuracy kept.

Budget: as many example-gradients (one example's forward and backward pass) as first-order MAML spends, i.e.
outer steps x meta-batch x (K x support + query) = 60 x 4 x (3 x 8 + 8) = 7,680 at the defaults, which is 960 steps
at batch 8 (--multitask-steps overrides it). Reptile spends 60 x 4 x 3 x 16 = 11,520, second order the same
7,680 passes as first order plus the backward through the inner steps.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from app.engine.artifact import Artifact
from app.engine.methods.prompt import PromptConfig
from app.engine.model import FrozenModel
from bench.transfer_data import spec
from workers.inputs import Source
from workers.jobs.meta_init import DEFAULT_META_INIT_TEXT
from workers.training import EvalReport, train_prompt

BATCH_SIZE = 8


def example_gradients_of_first_order(args: argparse.Namespace) -> int:
    """What first-order MAML computes over a run: per sampled task, K support steps and one query gradient."""
    return args.outer_steps * args.meta_batch * (args.inner_steps * args.support + args.query)


def multitask_steps(args: argparse.Namespace) -> int:
    """--multitask-steps, or first-order MAML's example-gradients at batch 8."""
    return getattr(args, "multitask_steps", 0) or max(1, example_gradients_of_first_order(args) // BATCH_SIZE)


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
        "example_gradients": steps * BATCH_SIZE,
        "first_order_example_gradients": example_gradients_of_first_order(args),
        "learning_rate": config.learning_rate,
        "seconds": time.perf_counter() - started,
        **result.metrics,
    }
    return result.artifact, record
