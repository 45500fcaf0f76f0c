"""MAML's meta-gradient (workers/jobs/meta_init.py): second order against finite differences on the tiny model,
first order and Reptile against updates computed by hand on a quadratic problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.text import DEFAULT_TEMPLATES, TaskSpec, encode_example
from app.engine.methods import get_method
from app.engine.methods.prompt import PromptConfig
from tests.tiny_model import build_tiny_model_dir, in_float64
from workers.jobs.meta_init.algorithm import _flat, _Pack, _pack_loss_of, _per_task_mean, adapt, meta_gradient
from workers.jobs.meta_init.options import MetaOrder

SENTIMENT = TaskSpec("classification", DEFAULT_TEMPLATES["classification"], ("positive", "negative"))
TOPIC = TaskSpec("classification", "Text: {input}\nTopic:", ("arts", "other"))


# --- a quadratic problem: support 1/2 (x - a)^T A (x - a), query 1/2 (x - b)^T B (x - b) ---------------------

A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
B = torch.tensor([[1.0, -0.3], [-0.3, 3.0]], dtype=torch.float64)
a = torch.tensor([1.0, -2.0], dtype=torch.float64)
b = torch.tensor([0.5, 0.5], dtype=torch.float64)
THETA = {"x": torch.tensor([0.3, 0.7], dtype=torch.float64)}
LR, STEPS = 0.1, 3


def support(p: dict[str, torch.Tensor]) -> torch.Tensor:
    d = p["x"] - a
    return 0.5 * d @ A @ d


def query(p: dict[str, torch.Tensor]) -> torch.Tensor:
    d = p["x"] - b
    return 0.5 * d @ B @ d


def _by_hand() -> list[torch.Tensor]:
    """phi_0 .. phi_K of SGD on the support loss: phi <- phi - lr A (phi - a)."""
    phis = [THETA["x"].clone()]
    for _ in range(STEPS):
        phis.append(phis[-1] - LR * A @ (phis[-1] - a))
    return phis


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_point() -> None:
    phi = _by_hand()[-1]
    grads, loss = meta_gradient(THETA, support, query, STEPS, LR, "first")
    torch.testing.assert_close(grads["x"], B @ (phi - b))
    assert loss == pytest.approx(float(0.5 * (phi - b) @ B @ (phi - b)))


def test_second_order_meta_gradient_carries_the_jacobian_of_the_inner_steps() -> None:
    phi = _by_hand()[-1]
    jacobian = torch.linalg.matrix_power(torch.eye(2, dtype=torch.float64) - LR * A, STEPS)  # symmetric
    grads, _ = meta_gradient(THETA, support, query, STEPS, LR, "second")
    torch.testing.assert_close(grads["x"], jacobian @ B @ (phi - b))
    first, _ = meta_gradient(THETA, support, query, STEPS, LR, "first")
    assert not torch.allclose(grads["x"], first["x"])  # the two orders differ here: the test can tell them apart


def test_reptile_moves_towards_the_point_adapted_on_support_and_query() -> None:
    phi = THETA["x"].clone()
    for _ in range(STEPS):  # Reptile adapts on the mean of the support and query losses
        phi = phi - LR * 0.5 * (A @ (phi - a) + B @ (phi - b))
    grads, _ = meta_gradient(THETA, support, query, STEPS, LR, "reptile")
    torch.testing.assert_close(grads["x"], THETA["x"] - phi)


def test_adapt_is_plain_sgd() -> None:
    start = {"x": THETA["x"].clone().requires_grad_(True)}
    adapted = adapt(start, support, STEPS, LR, create_graph=False)
    torch.testing.assert_close(adapted["x"].detach(), _by_hand()[-1])


# --- the real loss: a prompt on the tiny model --------------------------------------------------------------


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> FrozenModel:
    return load_frozen_model(build_tiny_model_dir(Path(tmp_path_factory.mktemp("tiny"))), device="cpu")


def test_second_order_meta_gradient_matches_finite_differences_on_the_tiny_model(frozen: FrozenModel) -> None:
    config = PromptConfig(num_virtual_tokens=2, init="random", seed=0)
    module = get_method("prompt").build(frozen, config, SENTIMENT, torch.Generator().manual_seed(0))
    pack = _Pack(frozen, module, 1)
    rows = [("the film was good", "positive"), ("a bad day", "negative"), ("good music", "positive")]
    encoded = [encode_example(frozen, SENTIMENT, text, label) for text, label in rows]
    support_loss, query_loss = _pack_loss_of(pack, [encoded[:2]]), _pack_loss_of(pack, [encoded[2:]])
    theta = _flat({name: p.detach().clone() for name, p in module.named_parameters()}, 1)
    steps, lr = 2, 0.5
    grads, _ = meta_gradient(theta, support_loss, query_loss, steps, lr, "second")
    first, _ = meta_gradient(theta, support_loss, query_loss, steps, lr, "first")

    def outer(params: dict[str, torch.Tensor]) -> float:
        start = {name: value.clone().requires_grad_(True) for name, value in params.items()}
        with sdpa_kernel(SDPBackend.MATH):
            return float(query_loss(adapt(start, support_loss, steps, lr, create_graph=False)).detach())

    generator = torch.Generator().manual_seed(1)
    eps = 1e-3  # the loss after two inner steps is sharply curved: larger steps leave the linear regime
    misses = []
    for _ in range(3):  # directional derivatives along random unit directions
        direction = {name: torch.randn(value.shape, generator=generator) for name, value in theta.items()}
        norm = torch.sqrt(sum((d**2).sum() for d in direction.values()))
        direction = {name: d / norm for name, d in direction.items()}
        plus = outer({n: theta[n] + eps * direction[n] for n in theta})
        minus = outer({n: theta[n] - eps * direction[n] for n in theta})
        numeric = (plus - minus) / (2 * eps)
        analytic = float(sum((grads[n] * direction[n]).sum() for n in theta))
        approximate = float(sum((first[n] * direction[n]).sum() for n in theta))
        assert analytic == pytest.approx(numeric, rel=0.02, abs=1e-3)
        misses.append(abs(approximate - numeric) > 0.1 * abs(numeric))
    # The first-order approximation misses the curvature term: the check can tell the orders apart.
    assert any(misses)


@pytest.fixture(scope="module")
def frozen64(frozen: FrozenModel) -> FrozenModel:
    """The tiny model in float64: rows padded to other lengths then round alike, so only a leak shows."""
    return in_float64(frozen)


@pytest.mark.parametrize("order", ["second", "first", "reptile"])
def test_a_packed_meta_batch_gives_the_mean_of_each_tasks_meta_gradient_alone(
    frozen64: FrozenModel, order: MetaOrder
) -> None:
    """Tasks of a meta-batch share each pass; each adapts its own copy of theta, exactly as it would alone."""
    config = PromptConfig(num_virtual_tokens=2, init="random", seed=0)
    module = get_method("prompt").build(frozen64, config, SENTIMENT, torch.Generator().manual_seed(0))
    theta = {name: p.detach().clone() for name, p in module.named_parameters()}
    texts = ["the film was good", "a bad day", "good music", "bad food", "a good game", "the song was bad"]
    tasks = [
        [encode_example(frozen64, SENTIMENT, text, "positive" if "good" in text else "negative") for text in texts],
        [encode_example(frozen64, TOPIC, t, "arts" if "film" in t or "song" in t else "other") for t in texts],
        [encode_example(frozen64, SENTIMENT, text, "negative" if "good" in text else "positive") for text in texts[:4]],
    ]
    alone, alone_losses = [], []
    for examples in tasks:
        one = _Pack(frozen64, module, 1)
        grads, loss = meta_gradient(
            _flat(theta, 1), _pack_loss_of(one, [examples[:2]]), _pack_loss_of(one, [examples[2:]]), 2, 0.5, order
        )
        alone.append(_per_task_mean(grads, list(theta), 1))
        alone_losses.append(loss)
    pack = _Pack(frozen64, module, len(tasks))
    grads, summed = meta_gradient(
        _flat(theta, len(tasks)),
        _pack_loss_of(pack, [examples[:2] for examples in tasks]),
        _pack_loss_of(pack, [examples[2:] for examples in tasks]),
        2,
        0.5,
        order,
    )
    packed = _per_task_mean(grads, list(theta), len(tasks))
    for name in theta:
        expected = sum(g[name] for g in alone) / len(tasks)
        scale = float(expected.abs().max())
        assert scale > 1e-4  # the tasks' gradients are not all zero
        # A leak between tasks would be of the gradient's own size; float64 rounding is far below this bound.
        assert float((packed[name] - expected).abs().max()) <= 1e-6 * scale
    assert summed == pytest.approx(sum(alone_losses), rel=1e-6)  # the loss is reported in float32
