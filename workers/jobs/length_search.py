"""`"type": "length_search"`: train one method at several prompt lengths and keep the shortest good one.

Lengths are given (e.g. 1, 5, 10, 20, 50) or derived from the token length t of the English init text (t/4, t/2,
t, 2t): the lecture's two ways to pick a length. Every length's validation score is recorded as a job event; the
stored prompt is the shortest whose score is within `tolerance` of the best (accuracy points for classification,
loss per token for generation).
"""

from __future__ import annotations

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.methods.init import default_init_text
from app.services.job_types import LengthSearch
from workers.jobs.base import JobContext, Trained
from workers.training import StepReport, TrainResult, train_prompt

TYPE = "length_search"


def search_lengths(search: LengthSearch, model: FrozenModel, spec: TaskSpec, init_text: str | None) -> list[int]:
    """The lengths to train, ascending and distinct."""
    if isinstance(search.lengths, list):
        return sorted(set(search.lengths))
    tokens = max(1, len(model.encode(init_text or default_init_text(spec))))
    return sorted({min(256, max(1, n)) for n in (tokens // 4, tokens // 2, tokens, 2 * tokens)})


def _score(result: TrainResult) -> float:
    """Higher is better: validation accuracy, or minus the validation loss for generation."""
    accuracy = result.metrics["best_val_accuracy"]
    return float(accuracy) if accuracy is not None else -float(result.metrics["best_val_loss"])  # type: ignore[arg-type]


def run(ctx: JobContext) -> Trained:
    search = LengthSearch.model_validate(ctx.options.get("search", {}))
    lengths = search_lengths(search, ctx.model, ctx.task_spec, ctx.config.init_text)
    train, val = ctx.labeled(ctx.train) or [], ctx.labeled(ctx.val)
    steps = ctx.config.steps
    ctx.set_total_steps(steps * len(lengths))
    results: list[tuple[int, TrainResult]] = []
    for index, length in enumerate(lengths):
        config = ctx.config.model_copy(update={"num_virtual_tokens": length})
        done = index * steps

        def on_step(report: StepReport, done: int = done) -> None:
            ctx.on_step(StepReport(done + report.step, steps * len(lengths), report.loss, report.lr))

        result = train_prompt(
            ctx.model,
            ctx.task_spec,
            train,
            val,
            config,
            on_step=on_step,
            on_eval=ctx.on_eval,
            should_stop=ctx.should_stop,
        )
        results.append((length, result))
        metrics = {key: result.metrics[key] for key in ("best_val_accuracy", "best_val_loss", "best_step")}
        ctx.event("length", f"length {length}: score {_score(result):.4f}", {"length": length, **metrics})
    best = max(_score(result) for _, result in results)
    length, chosen = next((n, r) for n, r in results if _score(r) >= best - search.tolerance)
    scores = {str(n): _score(r) for n, r in results}
    ctx.event(
        "length_chosen",
        f"kept length {length} (score {_score(chosen):.4f}; best {best:.4f}, tolerance {search.tolerance})",
        {"length": length, "scores": scores},
    )
    hyperparameters = {**ctx.config.model_dump(mode="json"), "num_virtual_tokens": length}
    return Trained(
        chosen.artifact,
        chosen.positions,
        chosen.best_step,
        {**chosen.metrics, "length_scores": scores},
        hyperparameters,
    )
