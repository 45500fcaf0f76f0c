"""Running claimed jobs: read each into the context its kind runs with, run them (a packable kind's jobs in shared
passes, others one by one), then end each on its own: stored, cancelled, failed, released or dropped."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.db.models import JobStatus
from app.db.repositories import JobRepository, TaskRepository
from app.engine.methods import parse_config
from app.services.prompts import store_prompt
from workers.gate import judge
from workers.heartbeat import Heartbeat, JobLost, WorkerStopping
from workers.interrupt import interruptible
from workers.jobs import KINDS, JobContext, JobKind, Trained
from workers.training import Cancelled

if TYPE_CHECKING:
    from workers.main import Worker

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A claimed job read from the database: what its kind runs with and what storing its result needs."""

    job_id: int
    kind: JobKind
    tenant: str
    task_id: int | None
    dataset_id: int | None
    total_steps: int
    lineage: dict[str, Any]
    context: JobContext
    promote: str = "always"


def run_jobs(worker: Worker, job_ids: list[int]) -> None:
    """Run claimed jobs, each beating its own heartbeat; whatever one does, the others end on their own."""
    beats = {job_id: Heartbeat(worker, job_id) for job_id in job_ids}
    for beat in beats.values():
        beat.start()
    try:
        outcomes: dict[int, Trained | BaseException] = {}
        prepared: list[Prepared] = []
        for job_id in job_ids:
            try:
                prepared.append(_prepare(worker, job_id, beats[job_id]))
            except Exception as exc:
                outcomes[job_id] = exc
        for group in _groups(prepared):
            if len(group) > 1:
                _announce_packing(group)
            try:
                with interruptible(worker.check_stop):
                    results = group[0].kind.run_many([p.context for p in group])
            except Exception as exc:  # the stop check ends the whole call: every job of the group is released
                results = [exc] * len(group)
            outcomes.update(zip([p.job_id for p in group], results, strict=True))
        ready = {p.job_id: p for p in prepared}
        for job_id in job_ids:
            _conclude(worker, job_id, beats[job_id], ready.get(job_id), outcomes[job_id])
    finally:
        for beat in beats.values():
            beat.close()


def _groups(prepared: list[Prepared]) -> list[list[Prepared]]:
    """A packable kind's jobs together, every other job alone; in claim order."""
    groups: dict[str, list[Prepared]] = {}
    alone: list[list[Prepared]] = []
    for p in prepared:
        if p.kind.packable:
            groups.setdefault(p.kind.name, []).append(p)
        else:
            alone.append([p])
    return [*groups.values(), *alone]


def _announce_packing(group: list[Prepared]) -> None:
    for p in group:
        others = [q.job_id for q in group if q is not p]
        p.context.event(
            "packed",
            f"training in shared passes with job{'s' if len(others) > 1 else ''} " + ", ".join(map(str, others)),
            {"packed_with": others},
        )


def _prepare(worker: Worker, job_id: int, beat: Heartbeat) -> Prepared:
    """Read a claimed job and its inputs into the context its kind runs with."""
    with worker.sessions() as session:
        job = JobRepository(session).get(job_id)
        if job is None:
            raise JobLost(job_id)
        kind = KINDS.get(job.type)
        if kind is None:
            raise ValueError(f"this worker knows no job type {job.type!r}; known: {', '.join(KINDS)}")
        config = parse_config(job.hyperparameters)
        options = kind.options(job)
        # The trainer refuses rows longer than the context itself, naming the example.
        model = worker.get_model()
        inputs = kind.inputs(session, job, config, options, model)
        prepared = Prepared(
            job_id=job_id,
            kind=kind,
            tenant=job.tenant,
            task_id=job.task_id,
            dataset_id=job.dataset_id,
            total_steps=job.progress.get("total_steps", config.steps),
            promote=job.promote or "always",
            lineage={
                "job_type": job.type,
                "job_id": job_id,
                "dataset_id": job.dataset_id,
                "validation_dataset_id": job.validation_dataset_id,
                "init": job.hyperparameters.get("init"),
                "init_prompt_id": config.init_prompt_id,
            },
            context=JobContext(
                model=model,
                spec=inputs.spec,
                train=inputs.train,
                val=inputs.val,
                config=config,
                options=options,
                init=inputs.init,
                on_step=beat.on_step,
                on_eval=beat.on_eval,
                should_stop=beat.should_stop,
                event=lambda kind, message, data: beat.beat(event=(kind, message, data)),
                set_total_steps=lambda total: beat.progress.update(total_steps=total),
                record_trial=beat.trial,
                teachers=inputs.teachers,
                sources=inputs.sources,
                candidates=inputs.candidates,
            ),
        )
    beat.progress = {"step": 0, "total_steps": prepared.total_steps}
    beat.attempt = job.attempts
    return prepared


def _conclude(
    worker: Worker, job_id: int, beat: Heartbeat, prepared: Prepared | None, outcome: Trained | BaseException
) -> None:
    """Store a job's prompt, or record how it ended."""
    beat.beat(force=True)  # the curve's last points, written while the job is still running
    values: dict[str, Any] = {}
    if isinstance(outcome, Trained):
        assert prepared is not None
        try:
            _store(worker, prepared, beat, outcome)
            return
        except JobLost:
            outcome = JobLost(job_id)
        except Exception as exc:
            log.exception("job %s: storing its prompt failed", job_id)
            outcome = exc
    if isinstance(outcome, JobLost):
        log.warning("worker %s lost job %s; dropping its work", worker.worker_id, job_id)
        return
    if isinstance(outcome, WorkerStopping):
        with worker.sessions.begin() as session:
            repo = JobRepository(session)
            restart = {"step": 0, "total_steps": beat.progress.get("total_steps", 0)}
            if repo.release(job_id, worker.worker_id, progress=restart):
                repo.add_event(job_id, "requeued", f"worker {worker.worker_id} is shutting down; queued again")
        return
    if isinstance(outcome, Cancelled):
        status = JobStatus.cancelled
    elif isinstance(outcome, Exception):
        log.error("job %s failed", job_id, exc_info=outcome)
        status, values = JobStatus.failed, {"error": f"{type(outcome).__name__}: {outcome}"}
    else:  # KeyboardInterrupt, SystemExit: not one job's doing
        raise outcome
    with worker.sessions.begin() as session:
        repo = JobRepository(session)
        if repo.finish(job_id, worker.worker_id, status, **values):
            message = values.get("error") or "cancelled on request"
            repo.add_event(job_id, status.value, message)


def _store_ensemble(session: Session, prepared: Prepared, result: Trained, best_id: int, *, serve: bool) -> None:
    """Store the other members of an ensemble result as inactive versions and, when the best one was promoted,
    serve them all as the task's default ensemble (unless a traffic split stands)."""
    model, repo = prepared.context.model, JobRepository(session)
    ids = [best_id]
    for member in result.members:
        stored = store_prompt(
            session,
            tenant=prepared.tenant,
            task_id=prepared.task_id,
            artifact=member.artifact,
            positions=member.positions,
            width=model.hidden_size,
            identity=model.identity,
            metrics=member.metrics,
            hyperparameters=member.hyperparameters,
            job_id=prepared.job_id,
            dataset_id=prepared.dataset_id,
            lineage={**prepared.lineage, **member.lineage, "hyperparameters": member.hyperparameters},
            activate=False,
        )
        ids.append(stored.id)
    task = TaskRepository(session).get(prepared.task_id) if prepared.task_id is not None else None
    if task is None or not serve:
        return
    if task.traffic:
        message = f"versions {ids} stored; a traffic split stands, so they are not made the default ensemble"
        repo.add_event(prepared.job_id, "warning", message, {"ensemble": ids})
        return
    task.ensemble = ids
    repo.add_event(
        prepared.job_id, "ensemble", f"the task serves versions {ids} as its default ensemble", {"ensemble": ids}
    )


def _store(worker: Worker, prepared: Prepared, beat: Heartbeat, result: Trained) -> None:
    """Score the prompt on the task's evaluation set, then store it (active or not, as the job's promote policy
    and the scores say) and finish the job in one transaction (JobLost when the job is no longer ours)."""
    model, job_id, config = prepared.context.model, prepared.job_id, prepared.context.config
    gate = judge(worker.sessions, prepared.tenant, prepared.task_id, prepared.promote, model, result.artifact)
    with worker.sessions.begin() as session:
        repo = JobRepository(session)
        prompt = store_prompt(
            session,
            tenant=prepared.tenant,
            task_id=prepared.task_id,
            artifact=result.artifact,
            positions=result.positions,
            width=model.hidden_size,
            identity=model.identity,
            metrics=result.metrics,
            hyperparameters=result.hyperparameters,
            job_id=job_id,
            dataset_id=prepared.dataset_id,
            lineage={**prepared.lineage, **result.lineage, "hyperparameters": result.hyperparameters},
            name=result.name,
            activate=gate.promoted,
        )
        gate.record(session, prompt.id)
        for kind, message, data in gate.events(prompt.id):
            repo.add_event(job_id, kind, message, data)
        if result.members:
            _store_ensemble(session, prepared, result, prompt.id, serve=gate.promoted)
        total = beat.progress.get("total_steps", config.steps)
        progress = {**beat.progress, "step": total, "total_steps": total}
        if not repo.finish(
            job_id, worker.worker_id, JobStatus.succeeded, result_prompt_id=prompt.id, progress=progress
        ):
            session.rollback()
            raise JobLost(job_id)
        kind = "meta-initialisation" if prepared.task_id is None else "prompt"
        repo.add_event(
            job_id,
            "succeeded",
            f"stored {kind} {prompt.id} (version {prompt.version}, method {result.artifact.method}) "
            f"from step {result.best_step}",
            {"prompt_id": prompt.id, "metrics": result.metrics},
        )
