"""Init `"auto"` (prompt transfer): start a new task's prompt from the stored prompt that already fits it best.

Before any step, every candidate (the newest stored versions and meta-initialisations of the job's method and
shapes, and the job's own text initialisation) is scored on a seeded sample of the training set: the mean
cross-entropy per target token, all candidates' rows served together in the engine's mixed batches (each
candidate's keys/values computed once). The lowest loss wins; its losses and the choice are job events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from app.engine.core.mixed import Row, target_scores
from app.engine.core.model import FrozenModel
from app.engine.core.prompts import Prompts
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec, encode_example
from app.engine.formats.artifact import Artifact
from app.engine.methods import TrainConfig, get_method, load_segments
from app.engine.methods.base import FromPrompt
from workers.inputs import Candidate

SAMPLE_SIZE = 32
TEXT_INIT = "text init"


@dataclass(frozen=True)
class Choice:
    """The start a prompt transfer picked: a stored version (artifact and id) or the text init (None, None)."""

    artifact: Artifact | None
    prompt_id: int | None
    losses: dict[str, float]  # candidate label -> loss per target token on the sample


@torch.no_grad()
def choose_init(
    frozen: FrozenModel,
    spec: TaskSpec,
    train: list[tuple[str, str]],
    config: TrainConfig,
    candidates: list[Candidate],
    *,
    sample_size: int = SAMPLE_SIZE,
) -> Choice:
    """The candidate (or the text init) with the lowest loss on a seeded sample of train."""
    generator = torch.Generator().manual_seed(config.seed)
    picked = torch.randperm(len(train), generator=generator)[:sample_size].tolist()
    sample = [train[i] for i in sorted(picked)]
    text_config = config.model_copy(update={"init": "text"})
    text_module = get_method(config.method).fresh(frozen, text_config, spec, generator).to(frozen.device)
    starts: list[tuple[str, Callable[[], Segments]]] = [(TEXT_INIT, text_module.segments)]
    for candidate in candidates:
        starts.append((candidate.label, partial(load_segments, frozen, candidate.artifact)))
    pool = Prompts(frozen, lambda index: starts[index][1]())
    encoded = [encode_example(frozen, spec, text, output) for text, output in sample]
    rows = [
        Row(index, spec, text, input_ids=tuple(example.input_ids))
        for index in range(len(starts))
        for (text, _), example in zip(sample, encoded, strict=True)
    ]
    targets = [[example.target_ids] for _ in starts for example in encoded]
    totals = target_scores(frozen, pool, rows, targets)
    tokens = sum(len(example.target_ids) for example in encoded)
    losses: dict[str, float] = {}
    for index, (label, _) in enumerate(starts):
        chunk = totals[index * len(sample) : (index + 1) * len(sample)]
        losses[label] = -float(sum(float(t.sum()) for t in chunk)) / tokens
    best = min(range(len(starts)), key=lambda index: losses[starts[index][0]])
    if best == 0:
        return Choice(None, None, losses)
    chosen = candidates[best - 1]
    return Choice(chosen.artifact, chosen.prompt_id, losses)


def resolve_auto(
    frozen: FrozenModel,
    spec: TaskSpec,
    train: list[tuple[str, str]],
    config: TrainConfig,
    candidates: list[Candidate],
    event: Callable[[str, str, dict[str, Any]], None],
) -> tuple[TrainConfig, Artifact | None, dict[str, Any]]:
    """For init "auto": the config and init artifact to train from, and the lineage of the choice."""
    choice = choose_init(frozen, spec, train, config, candidates)
    ids = {candidate.label: candidate.prompt_id for candidate in candidates}
    scored = [{"candidate": label, "prompt_id": ids.get(label), "loss": loss} for label, loss in choice.losses.items()]
    event(
        "init_candidates",
        f"scored {len(scored)} starts on {min(len(train), SAMPLE_SIZE)} training examples",
        {"candidates": scored},
    )
    best = min(choice.losses, key=choice.losses.__getitem__)
    event(
        "init_chosen",
        f"starting from {best} (loss {choice.losses[best]:.4f})",
        {"prompt_id": choice.prompt_id, "candidate": best, "loss": choice.losses[best]},
    )
    if choice.artifact is None:
        return config.model_copy(update={"init": "text"}), None, {"init_chosen": TEXT_INIT, "init_prompt_id": None}
    started = config.model_copy(update={"init": FromPrompt(from_prompt=choice.prompt_id)})
    return started, choice.artifact, {"init_chosen": best, "init_prompt_id": choice.prompt_id}
