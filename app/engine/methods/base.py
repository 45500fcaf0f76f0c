"""What every prompt method shares: the training hyperparameters, the trainable module's interface, the registry.

A method is one file in this package: a config (a pydantic model with `method: Literal[name]`, one member of
the discriminated union of job hyperparameters), a PromptModule (what training optimises and what is stored),
and a Method that builds the module for training, rebuilds it from a stored Artifact for serving, and checks a
config against the frozen model. The one forward never sees method names: a module only describes its prompt as
Segments (app/engine/core/segments.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.text_checks import refuse_unstorable

InitKind = Literal["text", "vocab", "random", "labels", "auto"]


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
    validation_fraction: float = Field(
        default=0.1, gt=0, lt=0.9, description="Share of the training set held out when no validation set is given."
    )
    max_validation_examples: int = Field(
        default=200, ge=1, description="Most validation examples scored per evaluation."
    )
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Seeds the split, the initialisation and batch sampling."
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
    """A method's trainable prompt: describes itself as Segments, stores itself as an Artifact."""

    method: ClassVar[str]

    @abstractmethod
    def segments(self) -> Segments:
        """How this prompt enters a forward pass (differentiable w.r.t. the module's parameters)."""

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
        with torch.no_grad():
            tensors = {name: t.detach().to("cpu").clone() for name, t in self.stored_tensors().items()}
        return Artifact(self.method, tensors, self.stored_config())


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
        version of this method and the shapes this config gives."""
        if init is None:
            return self.fresh(frozen, config, spec, generator).to(frozen.device)
        if init.method != self.name:
            raise ValueError(
                f"the init prompt is a {init.method!r} prompt; a {self.name!r} job needs a {self.name!r} prompt."
            )
        expected = self.expected_shapes(frozen, config)
        if init.shapes != expected:
            raise ValueError(f"the init prompt has shapes {init.shapes}; this job's prompt has {expected}.")
        return self.restore(frozen, init).to(frozen.device)

    def load(self, frozen: FrozenModel, artifact: Artifact) -> PromptModule:
        """Rebuild a stored prompt for serving (no gradients, on the model's device)."""
        return self.restore(frozen, artifact).to(frozen.device).requires_grad_(False)


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (each method file calls this once)."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice.")
    REGISTRY[method.name] = method
    return method
