"""What every prompt method shares: the training hyperparameters, the trainable module's interface, the registry.

A method is one file in this package: a config (a pydantic model with `method: Literal[name]`, one member of
the discriminated union of job hyperparameters), a PromptModule (what training optimises and what is stored),
and a Method that builds the module for training, rebuilds it from a stored Artifact for serving, and checks a
config against the frozen model. The one forward never sees method names: a module only describes its prompt as
Segments (app/engine/core/segments.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from app.engine.core.model import FrozenModel
from app.engine.core.segments import LabelHead, Segments
from app.engine.core.text import TaskSpec, label_token_ids
from app.engine.formats.artifact import Artifact
from app.text_checks import refuse_unstorable

InitKind = Literal["text", "vocab", "random", "labels", "auto"]
HEAD_TENSORS = ("head.weight", "head.bias")  # a label head's tensors in a stored artifact, beside the method's


def prompt_shapes(shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """A stored version's shapes without its label head: what an init prompt must match (heads follow the task)."""
    return {name: shape for name, shape in shapes.items() if name not in HEAD_TENSORS}


class FromPrompt(BaseModel):
    """Start from a stored prompt version of the same method and shape."""

    model_config = ConfigDict(extra="forbid")

    from_prompt: int = Field(ge=1, le=2**31 - 1, description="Id of a stored prompt version to start from.")


class TrainConfig(BaseModel):
    """Hyperparameters every method shares; stored as JSON on the job row. Subclasses add `method` and their own."""

    model_config = ConfigDict(extra="forbid")

    method: str
    num_virtual_tokens: int = Field(
        default=20, ge=1, le=256, description="Length of the soft prompt, in embedding vectors."
    )
    init: InitKind | FromPrompt = Field(
        default="text",
        description="How the prompt starts: embeddings of init_text, of random vocabulary tokens, random vectors, "
        'the label words\' tokens, {"from_prompt": id}: a stored version of the same method and shape, or "auto": '
        "whichever stored version or meta-initialisation of this method and shape (or the text init) has the "
        "lowest loss on a sample of the training set (prompt transfer).",
    )
    init_text: str | None = Field(
        default=None,
        max_length=4000,
        description='Text whose token embeddings start the prompt (init="text"); '
        "default: a short instruction built from the task.",
    )
    steps: int = Field(default=200, ge=1, le=100_000, description="Optimizer steps.")
    batch_size: int = Field(default=8, ge=1, le=256, description="Examples per step.")
    learning_rate: float = Field(default=0.03, gt=0, le=10, description="Peak AdamW learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay on the prompt.")
    # Not refused when larger than steps: a short job given the default warm-up simply warms up throughout.
    warmup_steps: int = Field(
        default=10, ge=0, description="Steps of linear warm-up before the cosine decay (capped at steps)."
    )
    max_grad_norm: float = Field(default=1.0, gt=0, le=1e6, description="Gradient norm clipping threshold.")
    eval_every: int = Field(default=25, ge=1, description="Validate every this many steps (and at 0 and end).")
    patience: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Early stopping on the validation curve: stop after this many evaluations in a row without a "
        "better score (the best checkpoint is stored); off when absent.",
    )
    validation_fraction: float = Field(
        default=0.1, gt=0, lt=0.9, description="Share of the training set held out when no validation set is given."
    )
    max_validation_examples: int = Field(
        default=200, ge=1, description="Most validation examples scored per evaluation."
    )
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Seeds the split, the initialisation and batch sampling."
    )
    label_head: bool = Field(
        default=False,
        description="Classification only: read the label from a learned linear head over the final hidden state "
        "(P-tuning v2), started from the label words' output embeddings and trained with the prompt, instead of "
        "scoring the label words. The head is stored with the prompt (K x hidden floats); such a prompt has no "
        "PEFT form.",
    )

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        return refuse_unstorable(data)

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainConfig:
        if self.init_text is not None and self.init != "text":
            raise ValueError(f'init_text is only used when init is "text", but init is {self.init!r}.')
        if self.init_text is not None and not self.init_text.strip():
            raise ValueError("init_text is blank; give some words or leave it out to use the default.")
        return self

    @property
    def init_prompt_id(self) -> int | None:
        """The stored version to start from, when init is {"from_prompt": id}."""
        return self.init.from_prompt if isinstance(self.init, FromPrompt) else None


class PromptModule(nn.Module, ABC):
    """A method's trainable prompt: describes itself as Segments, stores itself as an Artifact. Any method's module
    may carry a label head (`attach_head`), trained and stored with it."""

    method: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.head: nn.Linear | None = None
        # a head's targets: each label's token ids, in the task's order (set by Method.build for training)
        self.label_targets: list[list[int]] | None = None

    @abstractmethod
    def prompt_segments(self) -> Segments:
        """How this method's prompt enters a forward pass (differentiable w.r.t. the module's parameters)."""

    def segments(self) -> Segments:
        """The prompt's Segments with its label head, if it has one."""
        segments = self.prompt_segments()
        if self.head is None:
            return segments
        return replace(segments, head=LabelHead(self.head.weight, self.head.bias))

    def attach_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Give the module a label head [K, H] + [K] (a trainable parameter from now on)."""
        if weight.dim() != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(f"a label head is [K, hidden] and [K], got {tuple(weight.shape)} and {tuple(bias.shape)}.")
        head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        self.head = head

    @abstractmethod
    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that serve this prompt (any training-only reparameterisation collapsed)."""

    def stored_config(self) -> dict[str, Any]:
        """What serving needs besides the tensors (JSON)."""
        return {}

    @property
    @abstractmethod
    def positions(self) -> int:
        """Positions the prompt adds to every row (the stored num_virtual_tokens)."""

    def artifact(self) -> Artifact:
        """A detached float32 CPU snapshot, ready to store."""
        stored = dict(self.stored_tensors())
        config = self.stored_config()
        if self.head is not None:
            stored.update(zip(HEAD_TENSORS, (self.head.weight, self.head.bias), strict=True))
            config = {**config, "label_head": True}
        with torch.no_grad():
            tensors = {name: t.detach().to("cpu").clone() for name, t in stored.items()}
        return Artifact(self.method, tensors, config)


class Method(ABC):
    """A prompt method: its config type, whether its prompt is cached per version, build and load."""

    name: ClassVar[str]
    config_type: ClassVar[type[TrainConfig]]
    cacheable: ClassVar[str]  # what the pool caches per version, in words (README, /v1/methods)
    # True when the prompt gives no state of its own to predict from: a row must bring at least one token.
    needs_input: ClassVar[bool] = False

    def check(self, frozen: FrozenModel, config: TrainConfig) -> None:
        """Refuse a config this frozen model cannot run (ValueError with what to fix); shapes are checked here."""
        del frozen, config

    def positions(self, config: TrainConfig) -> int:
        """Positions a row needs besides its own tokens (for the context-length check before training)."""
        return config.num_virtual_tokens

    @abstractmethod
    def expected_shapes(self, frozen: FrozenModel, config: TrainConfig) -> dict[str, list[int]]:
        """The shapes of the artifact a job with this config stores (an init prompt must match them)."""

    @abstractmethod
    def fresh(
        self, frozen: FrozenModel, config: TrainConfig, spec: TaskSpec, generator: torch.Generator
    ) -> PromptModule:
        """A new module, started as config.init says (text, vocab, random or labels)."""

    @abstractmethod
    def restore(self, frozen: FrozenModel, artifact: Artifact) -> PromptModule:
        """The module a stored artifact holds (ValueError when it does not fit this model)."""

    def build(
        self,
        frozen: FrozenModel,
        config: TrainConfig,
        spec: TaskSpec,
        generator: torch.Generator,
        init: Artifact | None = None,
    ) -> PromptModule:
        """The trainable module on the model's device, started as config.init says or from `init`, a stored
        version of this method and the shapes this config gives; with its label head when config.label_head (the
        init's head when it has one of this task's size, else one started from the label words)."""
        if config.label_head and spec.kind != "classification":
            raise ValueError(f"label_head reads a label, and a {spec.kind} task has none; leave label_head out.")
        if init is None:
            module = self.fresh(frozen, config, spec, generator)
        else:
            if init.method != self.name:
                raise ValueError(
                    f"the init prompt is a {init.method!r} prompt; a {self.name!r} job needs a {self.name!r} prompt."
                )
            expected = self.expected_shapes(frozen, config)
            if prompt_shapes(init.shapes) != expected:
                raise ValueError(
                    f"the init prompt has shapes {prompt_shapes(init.shapes)}; this job's prompt has {expected}."
                )
            module = self.restore(frozen, init)
        if config.label_head:
            module.label_targets = label_token_ids(frozen, spec)
            stored = _stored_head(init)
            if stored is not None and stored[0].shape == (len(spec.labels), frozen.hidden_size):
                module.attach_head(*stored)
            else:
                module.attach_head(*_word_head(frozen, module.label_targets))
        return module.to(frozen.device)

    def load(self, frozen: FrozenModel, artifact: Artifact) -> PromptModule:
        """Rebuild a stored prompt for serving (no gradients, on the model's device), its label head included."""
        module = self.restore(frozen, artifact)
        stored = _stored_head(artifact)
        if stored is not None:
            if stored[0].shape[1] != frozen.hidden_size:
                raise ValueError(
                    f"the stored label head has width {stored[0].shape[1]}; this model's hidden size is "
                    f"{frozen.hidden_size}."
                )
            module.attach_head(*stored)
        return module.to(frozen.device).requires_grad_(False)


def _stored_head(artifact: Artifact | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A stored version's label head (weight, bias), or None."""
    if artifact is None or HEAD_TENSORS[0] not in artifact.tensors:
        return None
    return artifact.tensor(HEAD_TENSORS[0], 2).float(), artifact.tensor(HEAD_TENSORS[1], 1).float()


def _word_head(frozen: FrozenModel, labels: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A head that starts where label-word scoring starts: row k is the output embedding of label k's first token
    (the LM's logit of that token), no bias."""
    output = frozen.model.get_output_embeddings().weight.detach()
    weight = output[torch.tensor([ids[0] for ids in labels], device=output.device)].float().cpu().clone()
    return weight, torch.zeros(len(labels))


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (each method file calls this once)."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice.")
    REGISTRY[method.name] = method
    return method
