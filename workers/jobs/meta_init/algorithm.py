"""`"type": "meta_init"`: meta-learn a prompt initialisation across tasks (MAML), stored as a prompt of no task.

Each outer step samples `meta_batch` tasks (a shuffled cycle, so every task is sampled about equally often) and,
for each, fresh disjoint support and query subsets of its examples. From the current initialisation theta, K
steps of SGD on the support loss give the adapted prompt phi_K; the query loss at phi_K scores theta. The
meta-gradient, averaged over the meta-batch, clipped to max_grad_norm, drives Adam on theta:
- "second": d L_query(phi_K) / d theta through the K steps: autograd differentiates the inner updates
  (create_graph), so it computes Hessian-vector products, never a Hessian;
- "first": the first-order approximation, grad L_query at phi_K, applied to theta;
- "reptile": theta - phi_K (Reptile: move towards the adapted prompt), with the K steps run on support and query.
Every task keeps its own template and labels: a task's loss is its gold outputs' cross-entropy per token under
the prompt (the training objective of a train job), so the initialisation serves tasks of different label sets.
Progress: each outer step's mean query loss; every eval_every steps, the post-adaptation query loss on fixed
episodes of up to 8 tasks (the best initialisation by it is stored).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from app.engine.core.model import FrozenModel
from app.engine.core.text import EncodedExample
from app.engine.methods import get_method
from app.engine.methods.base import PromptModule
from workers.inputs import Source
from workers.jobs.base import JobContext, Trained
from workers.jobs.meta_init.options import NOT_STORED, MetaInitOptions, MetaLearning, MetaOrder
from workers.loop import Loop
from workers.train_steps import batch_losses, encode_all

Params = dict[str, torch.Tensor]
LossOf = Callable[[Params], torch.Tensor]
DEFAULT_META_INIT_TEXT = "Read the input and answer the question."
WARN_SECOND_ORDER_STEPS = 5  # past this many inner steps, second-order meta-gradients tend to explode or vanish
EVAL_TASKS = 8


# --- the meta-gradient (pure: any differentiable loss of a dict of tensors) --------------------------------


def adapt(params: Params, loss_of: LossOf, steps: int, lr: float, *, create_graph: bool) -> Params:
    """phi_K: K steps of plain SGD from params on loss_of (differentiable w.r.t. params when create_graph)."""
    for _ in range(steps):
        grads = torch.autograd.grad(loss_of(params), list(params.values()), create_graph=create_graph)
        params = {name: value - lr * grad for (name, value), grad in zip(params.items(), grads, strict=True)}
    return params


def meta_gradient(
    theta: Params, support: LossOf, query: LossOf, steps: int, lr: float, order: MetaOrder
) -> tuple[Params, float]:
    """(the meta-gradient of one task w.r.t. theta, the query loss after adaptation)."""
    if order == "second":
        start = {name: value.detach().requires_grad_(True) for name, value in theta.items()}
        # The fused attention kernels have no second derivative; the math kernel computes the same attention.
        with sdpa_kernel(SDPBackend.MATH):
            adapted = adapt(start, support, steps, lr, create_graph=True)
            loss = query(adapted)
            grads = torch.autograd.grad(loss, list(start.values()))
        return dict(zip(start, grads, strict=True)), float(loss.detach())
    start = {name: value.detach().requires_grad_(True) for name, value in theta.items()}
    if order == "first":
        adapted = adapt(start, support, steps, lr, create_graph=False)
        final = {name: value.detach().requires_grad_(True) for name, value in adapted.items()}
        loss = query(final)
        grads = torch.autograd.grad(loss, list(final.values()))
        return dict(zip(final, grads, strict=True)), float(loss.detach())
    # Reptile adapts on all the task's sampled data; its "gradient" is the way back from phi_K to theta.
    adapted = adapt(start, lambda p: 0.5 * (support(p) + query(p)), steps, lr, create_graph=False)
    with torch.no_grad():
        after = float(query(adapted))
        return {name: theta[name].detach() - adapted[name].detach() for name in theta}, after


# --- the job -----------------------------------------------------------------------------------------------


class _Pack(nn.Module):
    """n copies of a prompt module whose losses run in one pass, callable with substitute parameters for every copy
    at once (torch.func.functional_call): the tasks of a meta-batch adapt side by side, each row over its own
    task's copy. Parameters are named "i.name" for copy i (see _flat)."""

    def __init__(self, frozen: FrozenModel, module: PromptModule, n: int) -> None:
        super().__init__()
        self.frozen = frozen
        self.members = nn.ModuleList(copy.deepcopy(module) for _ in range(n))

    def forward(self, batches: list[list[EncodedExample]]) -> torch.Tensor:
        """Each copy's mean loss per target token on its batch: [n]."""
        members: list[PromptModule] = list(self.members)  # type: ignore[arg-type]
        return batch_losses(self.frozen, list(zip(members, batches, strict=True)))


def _flat(theta: Params, n: int) -> Params:
    """theta repeated for n packed copies, as "i.name": the starting point of every task of a meta-batch."""
    return {f"{i}.{name}": value for i in range(n) for name, value in theta.items()}


def _pack_loss_of(pack: _Pack, batches: list[list[EncodedExample]]) -> LossOf:
    """The summed loss of every copy on its batch: its gradient w.r.t. copy i is task i's own gradient."""
    return lambda params: functional_call(pack, {f"members.{k}": p for k, p in params.items()}, (batches,)).sum()


def _per_task_mean(grads: Params, names: list[str], n: int) -> Params:
    """The mean over the n copies of a flat ("i.name") gradient."""
    return {name: sum(grads[f"{i}.{name}"] for i in range(n)) / n for name in names}  # type: ignore[misc]


def _episode(examples: list[EncodedExample], meta: MetaLearning, rng: random.Random) -> tuple[list, list]:
    """Disjoint support and query subsets (shrunk to fit a small dataset: at least one example each)."""
    order = rng.sample(range(len(examples)), len(examples))
    support = min(meta.support_size, len(examples) - 1)
    query = min(meta.query_size, len(examples) - support)
    return [examples[i] for i in order[:support]], [examples[i] for i in order[support : support + query]]


def _task_cycle(count: int, rng: random.Random) -> Iterator[int]:
    """Task indices in shuffled rounds: every task is sampled once per round."""
    while True:
        yield from rng.sample(range(count), count)


def meta_learn(ctx: JobContext, options: MetaInitOptions) -> Trained:
    """Meta-learn the initialisation over ctx.sources; the best by post-adaptation query loss is stored."""
    frozen = ctx.model
    meta = options.meta
    config = ctx.config
    if config.init == "text" and config.init_text is None:
        config = config.model_copy(update={"init_text": DEFAULT_META_INIT_TEXT})
    sources: list[Source] = ctx.sources
    method = get_method(config.method)
    method.check(frozen, config)
    positions = method.positions(config)
    encoded = [encode_all(frozen, s.spec, s.examples, positions, f"task {s.name!r}") for s in sources]
    generator = torch.Generator().manual_seed(config.seed)
    module = method.build(frozen, config, sources[0].spec, generator, ctx.init)
    packs: dict[int, _Pack] = {}

    def pack(n: int) -> _Pack:
        if n not in packs:
            packs[n] = _Pack(frozen, module, n)
        return packs[n]

    names = [name for name, p in module.named_parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=meta.outer_lr)
    if meta.order == "second" and meta.inner_steps > WARN_SECOND_ORDER_STEPS:
        ctx.event(
            "warning",
            f"{meta.inner_steps} inner steps: second-order meta-gradients through many steps can explode or vanish; "
            f"they are clipped to norm {config.max_grad_norm}, and first order or Reptile is cheaper",
            {"inner_steps": meta.inner_steps, "max_grad_norm": config.max_grad_norm},
        )
    rng = random.Random(config.seed)
    cycle = _task_cycle(len(sources), rng)
    eval_rng = random.Random(config.seed + 1)
    eval_tasks = sorted(eval_rng.sample(range(len(sources)), min(EVAL_TASKS, len(sources))))
    episodes = [(index, *_episode(encoded[index], meta, eval_rng)) for index in eval_tasks]

    def params() -> Params:
        return {name: p for name, p in module.named_parameters() if name in names}

    def evaluate() -> tuple[float, None]:
        """Mean query loss after K first-order SGD steps from the current theta, on the fixed episodes (and, for
        comparison, before them)."""
        n = len(episodes)
        supports, queries = [support for _, support, _ in episodes], [query for _, _, query in episodes]
        start = {k: p.detach().requires_grad_(True) for k, p in _flat(params(), n).items()}
        adapted = adapt(start, _pack_loss_of(pack(n), supports), meta.inner_steps, meta.inner_lr, create_graph=False)
        with torch.no_grad():
            unadapted = float(_pack_loss_of(pack(n), queries)(start)) / n
            loss = float(_pack_loss_of(pack(n), queries)(adapted)) / n
        evaluations.append({"step": loop_step(), "query_loss_before": unadapted, "query_loss_after": loss})
        return loss, None

    evaluations: list[dict[str, float]] = []
    loop: Loop | None = None

    def loop_step() -> int:
        return 0 if loop is None else loop.step

    # The shared skeleton (workers/loop.py): cancel check, reports, evaluation every eval_every, the best theta.
    loop = Loop(
        module,
        meta.outer_steps,
        config.eval_every,
        evaluate,
        on_step=ctx.on_step,
        on_eval=ctx.on_eval,
        should_stop=ctx.should_stop,
        unit="outer step",
    )
    samples = [0] * len(sources)
    norms: list[float] = []
    skipped = 0
    for step in range(1, meta.outer_steps + 1):
        loop.check_stop()
        started = time.perf_counter()
        supports, queries = [], []
        for _ in range(meta.meta_batch):
            index = next(cycle)
            samples[index] += 1
            support, query = _episode(encoded[index], meta, rng)
            supports.append(support)
            queries.append(query)
        # The meta-batch's tasks adapt in shared passes, each over its own copy of theta.
        n = meta.meta_batch
        grads, summed = meta_gradient(
            _flat(params(), n),
            _pack_loss_of(pack(n), supports),
            _pack_loss_of(pack(n), queries),
            meta.inner_steps,
            meta.inner_lr,
            meta.order,
        )
        total = _per_task_mean(grads, names, n)
        query_loss = summed / n
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in total.values()])))
        norms.append(norm)
        if not math.isfinite(norm):
            skipped += 1
            ctx.event("warning", f"outer step {step}: meta-gradient is not finite; update skipped", {"step": step})
        else:
            for name, p in module.named_parameters():
                if name in total:
                    p.grad = total[name]
            torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loop.stepped(query_loss, meta.outer_lr, time.perf_counter() - started)
    clipped = sum(norm > config.max_grad_norm for norm in norms if math.isfinite(norm))
    metrics: dict[str, Any] = {
        **loop.metrics(),
        "mean_meta_gradient_norm": sum(n for n in norms if math.isfinite(n)) / max(1, len(norms) - skipped),
        "clipped_steps": clipped,
        "skipped_steps": skipped,
        "task_samples": {source.name: count for source, count in zip(sources, samples, strict=True)},
        "evaluations": evaluations,
    }
    lineage = {
        "source_tasks": [{"task_id": s.task_id, "task_name": s.name, "dataset_id": s.dataset_id} for s in sources],
        "order": meta.order,
    }
    best_artifact, best_step = loop.best_result()
    return Trained(
        best_artifact,
        module.positions,
        best_step,
        metrics,
        {**ctx.config.model_dump(mode="json", exclude=set(NOT_STORED)), **meta.model_dump(mode="json")},
        lineage=lineage,
        name=options.name,
    )
