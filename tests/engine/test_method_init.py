"""The shared training config, the methods' union, and where a prompt's vectors start."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec, label_token_ids
from app.engine.methods import REGISTRY, TrainConfigUnion, parse_config
from app.engine.methods.base import TrainConfig
from app.engine.methods.init import initial_vectors
from app.engine.methods.prompt import PromptConfig, SoftPrompt


def _embeddings(frozen: FrozenModel, ids: list[int]) -> torch.Tensor:
    return frozen.embed(torch.tensor(ids)).detach()


def test_config_defaults_and_json_round_trip() -> None:
    config = PromptConfig()
    assert (config.num_virtual_tokens, config.init, config.steps, config.learning_rate) == (20, "text", 200, 0.03)
    assert PromptConfig.model_validate(config.model_dump(mode="json")) == config
    for method in REGISTRY.values():
        assert all(field.description for field in method.config_type.model_fields.values()), method.name
    assert PromptConfig(steps=3).warmup_steps == 10  # a short job just warms up throughout


def test_config_refuses_nonsense_with_a_sentence() -> None:
    with pytest.raises(ValidationError, match='init_text is only used when init is "text"'):
        PromptConfig(init="random", init_text="hello")
    with pytest.raises(ValidationError, match="init_text is blank"):
        PromptConfig(init_text="   ")
    with pytest.raises(ValidationError, match="Extra inputs"):
        PromptConfig.model_validate({"stepz": 3})
    with pytest.raises(ValidationError):
        PromptConfig(num_virtual_tokens=0)


def initial_prompt(
    frozen: FrozenModel, config: TrainConfig, spec: TaskSpec, generator: torch.Generator
) -> torch.Tensor:
    return initial_vectors(frozen, config, spec, generator, config.num_virtual_tokens)


def test_hyperparameters_dispatch_on_method_and_default_to_prompt() -> None:
    adapter = TypeAdapter(TrainConfigUnion)
    assert adapter.validate_python({}).method == "prompt"
    assert adapter.validate_python({"steps": 3}) == PromptConfig(steps=3)
    prefix = adapter.validate_python({"method": "prefix", "reparameterize": True})
    assert (type(prefix).__name__, prefix.reparameterize) == ("PrefixConfig", True)  # type: ignore[attr-defined]
    # Stored jobs from before methods existed have no "method": they read back as plain prompt tuning.
    assert parse_config({"num_virtual_tokens": 7}).method == "prompt"
    with pytest.raises(ValidationError, match="unknown method; use one of: around, deep_overwrite"):
        adapter.validate_python({"method": "lora"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        adapter.validate_python({"method": "prompt", "rank": 4})  # a field of another method
    with pytest.raises(ValidationError):
        adapter.validate_python({"method": "deep_overwrite", "layers": {"every": 0}})


def test_text_init_defaults_to_an_instruction_naming_the_labels(frozen: FrozenModel, sentiment: TaskSpec) -> None:
    config = PromptConfig(num_virtual_tokens=30)
    prompt = initial_prompt(frozen, config, sentiment, torch.Generator().manual_seed(0))
    ids = frozen.encode("Classify the text as positive or negative.")
    assert prompt.shape == (30, 64) and prompt.dtype == torch.float32
    assert torch.equal(prompt[: len(ids)], _embeddings(frozen, ids))
    assert torch.equal(prompt[len(ids) : 2 * len(ids)], _embeddings(frozen, ids)[: 30 - len(ids)])


def test_labels_init_tiles_label_tokens_and_needs_labels(
    frozen: FrozenModel, sentiment: TaskSpec, answer: TaskSpec
) -> None:
    config = PromptConfig(num_virtual_tokens=3, init="labels")
    prompt = initial_prompt(frozen, config, sentiment, torch.Generator())
    ids = [token for label in label_token_ids(frozen, sentiment) for token in label]
    assert torch.equal(prompt, _embeddings(frozen, (ids * 3)[:3]))
    with pytest.raises(ValueError, match="needs a task with labels"):
        initial_prompt(frozen, config, answer, torch.Generator())


def test_random_and_vocab_inits_are_seeded(frozen: FrozenModel, answer: TaskSpec) -> None:
    for init in ("random", "vocab"):
        config = PromptConfig(num_virtual_tokens=8, init=init)  # type: ignore[arg-type]
        first = initial_prompt(frozen, config, answer, torch.Generator().manual_seed(1))
        assert torch.equal(first, initial_prompt(frozen, config, answer, torch.Generator().manual_seed(1)))
        assert not torch.equal(first, initial_prompt(frozen, config, answer, torch.Generator().manual_seed(2)))
    table_std = frozen.model.get_input_embeddings().weight.std()
    random_prompt = initial_prompt(
        frozen, PromptConfig(num_virtual_tokens=256, init="random"), answer, torch.Generator()
    )
    assert abs(random_prompt.std() / table_std - 1) < 0.1


def test_soft_prompt_returns_its_trainable_vectors() -> None:
    initial = torch.randn(5, 64)
    module = SoftPrompt(initial)
    assert module.positions == 5
    assert torch.equal(module(), initial) and module().requires_grad
    assert [name for name, _ in module.named_parameters()] == ["embedding.weight"]
