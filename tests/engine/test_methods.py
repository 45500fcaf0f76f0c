"""Every prompt method behind the seam: inits, stored artifacts, mixed batches, what each method's prompt means."""

from __future__ import annotations

import random
from typing import Any, get_args

import pytest
import torch

from app.engine.core.layer_loop import overwrite_kvs
from app.engine.core.mixed import Row, classify_rows, generate_rows, logits_rows
from app.engine.core.model import FrozenModel
from app.engine.core.prompt_cache import compute_prompt_kvs
from app.engine.core.prompts import Prompts, single
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec, encode_example
from app.engine.formats.artifact import Artifact
from app.engine.methods import REGISTRY, get_method, load_segments, parse_config
from app.engine.methods.base import PromptModule
from app.engine.methods.input_mapping import InputMapping
from tests.engine.reference import plain_logits
from workers.training import batch_loss

METHODS = sorted(REGISTRY)
SENTIMENT = TaskSpec("classification", "Input: {input}\nLabel:", ("positive", "negative"))
WORDY = TaskSpec("classification", "Classify: {input} ->", ("extraordinary", "neutral nice", "yes"))
ANSWER = TaskSpec("generation", "Input: {input}\nOutput:")
TEXTS = ("good", "what is the capital of france?", "they hate that terrible awful place; the service is poor", "")
OPTIONS: dict[str, dict[str, Any]] = {
    "prompt": {},
    "prefix": {},
    "deep_overwrite": {"layers": "all"},
    "around": {"num_after_tokens": 3},
    "input_mapping": {"rank": 4},
    "input_dependent": {"generator_hidden": 16},
}


@pytest.fixture(params=["gpt2", "llama", "gemma"])
def model(request: pytest.FixtureRequest) -> FrozenModel:
    fixture = {"gpt2": "frozen", "llama": "tiny_llama", "gemma": "tiny_gemma"}[request.param]
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


def build(frozen: FrozenModel, method: str, seed: int = 0, **overrides: Any) -> PromptModule:
    config = parse_config({"method": method, "num_virtual_tokens": 4, **OPTIONS[method], **overrides})
    return get_method(method).build(frozen, config, SENTIMENT, torch.Generator().manual_seed(seed))


def trained_like(frozen: FrozenModel, method: str, seed: int) -> Artifact:
    """A stored artifact whose every tensor moved away from its init (as after training), seeded."""
    module = build(frozen, method, seed)
    generator = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return Artifact.from_bytes(module.artifact().to_bytes())


def test_every_method_is_registered_with_a_config_and_a_cache_story() -> None:
    assert METHODS == ["around", "deep_overwrite", "input_dependent", "input_mapping", "prefix", "prompt"]
    for name, method in REGISTRY.items():
        assert method.name == name
        # the config's discriminator names this method and no other: hyperparameters naming it parse to its config
        assert get_args(method.config_type.model_fields["method"].annotation) == (name,)
        config = parse_config({"method": name})
        assert type(config) is method.config_type and config.method == name
        assert method.cacheable


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("init", ["text", "vocab", "random", "labels", "from_prompt"])
def test_every_method_starts_from_every_init_with_the_shapes_it_stores(
    frozen: FrozenModel, method: str, init: str
) -> None:
    config = parse_config({"method": method, "num_virtual_tokens": 4, **OPTIONS[method], "init": "random"})
    expected = get_method(method).expected_shapes(frozen, config)
    if init == "from_prompt":
        source = trained_like(frozen, method, seed=1)
        config = parse_config(
            {"method": method, "num_virtual_tokens": 4, **OPTIONS[method], "init": {"from_prompt": 1}}
        )
        module = get_method(method).build(frozen, config, SENTIMENT, torch.Generator(), source)
        for name, tensor in module.artifact().tensors.items():
            assert torch.equal(tensor, source.tensors[name]), name  # starts exactly at the stored version
    else:
        config = parse_config({"method": method, "num_virtual_tokens": 4, **OPTIONS[method], "init": init})
        module = get_method(method).build(frozen, config, SENTIMENT, torch.Generator().manual_seed(0))
    assert module.artifact().shapes == expected
    assert all(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_an_init_prompt_of_another_shape_or_method_is_refused(frozen: FrozenModel, method: str) -> None:
    config = parse_config({"method": method, "num_virtual_tokens": 5, **OPTIONS[method]})
    short = trained_like(frozen, method, seed=0)  # 4 vectors
    with pytest.raises(ValueError, match="shapes"):
        get_method(method).build(frozen, config, SENTIMENT, torch.Generator(), short)
    other = trained_like(frozen, "prompt" if method != "prompt" else "prefix", seed=0)
    with pytest.raises(ValueError, match="prompt; a"):
        get_method(method).build(frozen, config, SENTIMENT, torch.Generator(), other)


@pytest.mark.parametrize("method", METHODS)
def test_a_stored_prompt_serves_what_the_trained_module_serves(frozen: FrozenModel, method: str) -> None:
    module = build(frozen, method, seed=3)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.03)
    rows = [Row(0, SENTIMENT, text) for text in TEXTS]
    live = logits_rows(frozen, single(frozen, module.segments()), rows)
    stored = Artifact.from_bytes(module.artifact().to_bytes({"base_model": "abc"}))
    assert stored.method == method
    served = logits_rows(frozen, single(frozen, load_segments(frozen, stored)), rows)
    for a, b in zip(live, served, strict=True):
        assert (a - b).abs().max() < 1e-5


def test_every_method_in_one_mixed_batch_serves_each_row_as_alone(model: FrozenModel) -> None:
    artifacts = {i: trained_like(model, method, seed=i) for i, method in enumerate(METHODS)}
    ids = list(artifacts) * 2  # two versions of each method
    artifacts.update({i + len(METHODS): trained_like(model, METHODS[i], seed=50 + i) for i in range(len(METHODS))})
    ids = list(artifacts)

    def loader(prompt_id: int) -> Segments:
        return load_segments(model, artifacts[prompt_id])

    rows = [Row(p, spec, text, max_new_tokens=6) for p in ids for spec in (SENTIMENT, WORDY, ANSWER) for text in TEXTS]
    random.Random(0).shuffle(rows)
    pool = Prompts(model, loader)
    logits = logits_rows(model, pool, rows, max_batch_tokens=700)  # several sub-batches
    classified = [r for r in rows if r.spec.kind == "classification"]
    probabilities = classify_rows(model, pool, classified, max_batch_tokens=700)
    generating = [r for r in rows if r.spec.kind == "generation"]
    texts = generate_rows(model, pool, generating, max_batch_tokens=700)
    for row, got in zip(rows, logits, strict=True):
        alone = logits_rows(model, Prompts(model, loader), [row])[0]
        assert (got - alone).abs().max().item() < 1e-4, (row.prompt_id, row.text)
    for row, got_probabilities in zip(classified, probabilities, strict=True):
        alone_probabilities = classify_rows(model, Prompts(model, loader), [row])[0]
        assert got_probabilities == pytest.approx(alone_probabilities, abs=1e-4)
    for row, text in zip(generating, texts, strict=True):
        assert [text] == generate_rows(model, Prompts(model, loader), [row])
    assert any(len(text) > 3 for text in texts)


def test_deep_prompt_without_replaced_layers_is_the_plain_prompt(model: FrozenModel) -> None:
    prompts = [torch.randn(n, 64, generator=torch.Generator().manual_seed(n)) for n in (3, 3)]
    with torch.no_grad():
        looped = overwrite_kvs(model, prompts, (), [torch.zeros(0, 3, 64)] * 2)
        plain = compute_prompt_kvs(model, prompts)
    for mine, reference in zip(looped, plain, strict=True):
        assert (mine.keys - reference.keys).abs().max() < 1e-5
        assert (mine.values - reference.values).abs().max() < 1e-5
        assert mine.last_hidden is not None and reference.last_hidden is not None
        assert (mine.last_hidden - reference.last_hidden).abs().max() < 1e-5


@pytest.mark.parametrize("method", ["deep_overwrite", "prefix"])
def test_deep_methods_start_as_the_plain_prompt_of_their_init(model: FrozenModel, method: str) -> None:
    deep = build(model, method, seed=0, init="text")
    plain = build(model, "prompt", seed=0, init="text")
    rows = [Row(0, SENTIMENT, text) for text in TEXTS]
    ours = logits_rows(model, single(model, deep.segments()), rows)
    reference = logits_rows(model, single(model, plain.segments()), rows)
    for a, b in zip(ours, reference, strict=True):
        assert (a - b).abs().max() < 1e-4


def test_replaced_states_change_what_later_layers_see(model: FrozenModel) -> None:
    module = build(model, "deep_overwrite", seed=0)
    row = [Row(0, SENTIMENT, "good")]
    before = logits_rows(model, single(model, module.segments()), row)[0]
    with torch.no_grad():
        # Random, not a constant shift: GPT-2's layer norm cancels a shift shared by every dimension.
        module.states.add_(torch.randn(module.states.shape, generator=torch.Generator().manual_seed(0)))  # type: ignore[operator,union-attr,arg-type]
    after = logits_rows(model, single(model, module.segments()), row)[0]
    assert (before - after).abs().max() > 1e-3


def test_a_layer_out_of_range_is_refused(frozen: FrozenModel) -> None:
    with pytest.raises(ValueError, match=r"layers \[2, 7\] are out of range: this model has layers 0..1"):
        build(frozen, "deep_overwrite", layers=[1, 2, 7])
    with pytest.raises(ValueError, match="out of range"):
        get_method("deep_overwrite").check(frozen, parse_config({"method": "deep_overwrite", "layers": [5]}))


def test_the_input_mapping_starts_as_identity_and_decodes_through_itself(frozen: FrozenModel) -> None:
    module = build(frozen, "input_mapping", seed=0)
    assert isinstance(module, InputMapping)
    prompt = module.prompt.detach()
    ids = encode_example(frozen, ANSWER, "good", None).input_ids
    rows = [Row(0, ANSWER, "good", max_new_tokens=6)]
    pool = single(frozen, module.segments())
    assert (logits_rows(frozen, pool, rows)[0] - plain_logits(frozen, prompt, ids)).abs().max() < 1e-4
    with torch.no_grad():
        module.mapping.up.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    text = generate_rows(frozen, single(frozen, module.segments()), rows)[0]
    # Reference: re-run the whole row for each new token, every token embedding mapped.
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(6):
            embeds = module.mapping(frozen.embed(torch.tensor(ids + generated)))
            hidden = frozen.model.base_model(inputs_embeds=torch.cat([prompt, embeds])[None]).last_hidden_state
            token = int(frozen.logits(hidden[0, -1]).argmax())
            if token == frozen.eos_token_id:
                break
            generated.append(token)
    assert text == frozen.decode(generated).removeprefix(" ")


def test_an_input_dependent_prompt_differs_per_input_and_is_not_cached(frozen: FrozenModel) -> None:
    module = build(frozen, "input_dependent", seed=0)
    with torch.no_grad():
        module.generator.w2.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))  # type: ignore[union-attr]
    pool = single(frozen, module.segments())
    pool.get(0)
    assert pool.get(0).kv is None and pool.get(0).row_prefix_length == 4
    embeds = [frozen.embed(torch.tensor(frozen.encode(text))) for text in ("good", "bad awful")]
    generated = [module.generator(e) for e in embeds]  # type: ignore[operator]
    assert generated[0].shape == (4, 64) and (generated[0] - generated[1]).abs().max() > 1e-3
    # Served rows see exactly [generated prompt | input]: the plain model given that prefix.
    for text in ("good", "bad awful"):
        ids = encode_example(frozen, SENTIMENT, text, None).input_ids
        prefix = module.generator(frozen.embed(torch.tensor(ids))).detach()  # type: ignore[operator]
        got = logits_rows(frozen, pool, [Row(0, SENTIMENT, text)])[0]
        assert (got - plain_logits(frozen, prefix, ids)).abs().max() < 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_the_loss_reaches_every_trainable_tensor_and_no_base_weight(frozen: FrozenModel, method: str) -> None:
    module = build(frozen, method, seed=0)
    if method == "input_mapping":
        with torch.no_grad():
            module.mapping.up.add_(0.01)  # type: ignore[operator]  # at exactly zero, down gets no gradient
    if method == "input_dependent":
        with torch.no_grad():
            module.generator.w2.add_(0.01)  # type: ignore[operator]
    examples = [
        encode_example(frozen, SENTIMENT, text, label) for text, label in [("good", "positive"), ("bad", "negative")]
    ]
    batch_loss(frozen, module, examples).backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(parameter.grad is None for parameter in frozen.model.parameters())
