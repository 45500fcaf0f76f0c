"""workers/interrupt.py: a check runs all through the passes of the thread that computes under it (forward and
backward), never in another thread's passes, and changes no result."""

from __future__ import annotations

import threading

import pytest
import torch

from app.engine.core.model import FrozenModel
from app.engine.core.text import DEFAULT_TEMPLATES, TaskSpec, encode_example
from app.engine.methods import get_method
from app.engine.methods.prompt import PromptConfig
from workers.interrupt import interruptible
from workers.jobs.meta_init.algorithm import _flat, _Pack, _pack_loss_of, meta_gradient

SENTIMENT = TaskSpec("classification", DEFAULT_TEMPLATES["classification"], ("positive", "negative"))
ROWS = [("the film was good", "positive"), ("a bad day", "negative"), ("good music", "positive"), ("bad", "negative")]


class Stop(Exception):
    pass


def meta_grads(frozen: FrozenModel) -> dict[str, torch.Tensor]:
    """A second-order meta-gradient of a prompt on the tiny model: forward passes, and a backward through the
    two inner steps' own backward passes."""
    config = PromptConfig(num_virtual_tokens=2, init="random", seed=0)
    module = get_method("prompt").build(frozen, config, SENTIMENT, torch.Generator().manual_seed(0))
    pack = _Pack(frozen, module, 1)
    encoded = [encode_example(frozen, SENTIMENT, text, label) for text, label in ROWS]
    theta = _flat({name: p.detach().clone() for name, p in module.named_parameters()}, 1)
    support, query = _pack_loss_of(pack, [encoded[:2]]), _pack_loss_of(pack, [encoded[2:]])
    grads, _ = meta_gradient(theta, support, query, 2, 0.5, "second")
    return grads


def test_a_meta_gradient_is_bit_identical_under_a_check_that_never_fires(frozen: FrozenModel) -> None:
    calls = 0

    def count() -> None:
        nonlocal calls
        calls += 1

    expected = meta_grads(frozen)
    with interruptible(count):
        got = meta_grads(frozen)
    assert calls > 100  # checked all through, not once per step
    assert got.keys() == expected.keys() and all(torch.equal(got[name], expected[name]) for name in expected)


@pytest.mark.parametrize("share", [0.1, 0.5, 0.99])
def test_a_check_that_raises_ends_the_computation_right_there(frozen: FrozenModel, share: float) -> None:
    """Raised at any of its checks (the last ones come in the final backward through the inner steps), the check's
    exception ends the computation: no further check runs and nothing is returned."""
    calls = 0

    def count() -> None:
        nonlocal calls
        calls += 1

    with interruptible(count):
        meta_grads(frozen)
    last = int(calls * share)
    calls = 0

    def stop_at_last() -> None:
        count()
        if calls == last:
            raise Stop

    results = []
    with pytest.raises(Stop), interruptible(stop_at_last):
        results.append(meta_grads(frozen))
    assert calls == last and results == []


def test_another_threads_passes_never_run_the_check(frozen: FrozenModel) -> None:
    """The inference engine serves on its own thread beside an embedded worker: its passes are not interrupted."""
    expected = meta_grads(frozen)
    results: list[dict[str, torch.Tensor]] = []

    def stopped() -> None:
        raise Stop

    threads = torch.get_num_threads()

    def serve() -> None:
        # The same OpenMP team size as this thread (a new thread starts from the process default, which an
        # earlier test's budget may have left elsewhere): bit-identical sums need the same reduction order.
        torch.set_num_threads(threads)
        results.append(meta_grads(frozen))

    with interruptible(stopped):
        other = threading.Thread(target=serve)
        other.start()
        other.join()
        with pytest.raises(Stop):
            meta_grads(frozen)
    assert len(results) == 1 and all(torch.equal(results[0][name], expected[name]) for name in expected)
