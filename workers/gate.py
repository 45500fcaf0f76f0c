"""The evaluation gate, run by the worker before it stores a job's prompt: score the new version on the task's
evaluation dataset (and the active version, if it was never scored there), and decide by the job's promote
policy whether the new version becomes active (app/services/evaluation.py has the metrics and the rule)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db.repositories import DatasetRepository, EvaluationRepository, PromptRepository, TaskRepository, scope_session
from app.engine.core.model import FrozenModel
from app.engine.formats.artifact import Artifact
from app.services import evaluation


@dataclass
class Gate:
    """What the gate decided, and the scores to store with the new version."""

    promoted: bool
    policy: str
    dataset_id: int | None = None
    new: dict[str, Any] | None = None
    active_id: int | None = None
    active: dict[str, Any] | None = None
    active_scored_now: bool = False
    notes: list[str] = field(default_factory=list)

    def record(self, session: Session, prompt_id: int) -> None:
        """Store the scores computed for this job (in the transaction that stores the version)."""
        if self.dataset_id is None or self.new is None:
            return
        evaluation.record(session, prompt_id, self.dataset_id, self.new)
        scored = self.active_scored_now and self.active_id is not None and self.active is not None
        # the active version may have been deleted while the new one trained
        if scored and EvaluationRepository(session).version_exists(self.active_id):  # type: ignore[arg-type]
            evaluation.record(session, self.active_id, self.dataset_id, self.active)  # type: ignore[arg-type]

    def events(self, prompt_id: int) -> Iterator[tuple[str, str, dict[str, Any]]]:
        data = {"prompt_id": prompt_id, "dataset_id": self.dataset_id, "new": self.new, "active": self.active}
        for note in self.notes:
            yield "warning", note, {"prompt_id": prompt_id}
        if self.new is not None:
            yield "evaluated", f"version {prompt_id} on dataset {self.dataset_id}: {_shown(self.new)}", data
        if not self.promoted:
            against = "" if self.active is None else f" against the active version's {_shown(self.active)}"
            why = "promote is never" if self.policy == "never" else f"not better: {_shown(self.new or {})}{against}"
            yield "not_promoted", f"version {prompt_id} stored inactive ({why})", {**data, "policy": self.policy}


def _shown(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "examples" and isinstance(v, float))


def judge(
    sessions: sessionmaker[Session],
    tenant: str,
    task_id: int | None,
    policy: str,
    model: FrozenModel,
    artifact: Artifact,
) -> Gate:
    """Score and decide (reads in a session of its own, computes outside any transaction)."""
    if task_id is None:  # a meta-initialisation serves no task: nothing to score, nothing to hold back
        return Gate(promoted=True, policy=policy)
    with sessions() as session:
        scope_session(session, tenant)
        task = TaskRepository(session).get(task_id)
        if task is None:
            return Gate(promoted=policy != "never", policy=policy)
        gate = Gate(promoted=policy != "never", policy=policy, dataset_id=task.evaluation_dataset_id)
        dataset = DatasetRepository(session).get(gate.dataset_id, with_examples=True) if gate.dataset_id else None
        if gate.dataset_id is not None and dataset is None:
            gate.notes.append(f"evaluation dataset {gate.dataset_id} was deleted; the version was not scored")
            gate.dataset_id = None
        if dataset is None:
            if policy == "if_better":
                gate.notes.append('the task has no evaluation dataset, so "if_better" promoted as "always"')
            return gate
        examples = [e for e in dataset.examples if e.get("output") is not None]
        gate.new = evaluation.score(model, task, artifact, examples)
        gate.active_id = task.active_prompt_id
        if gate.active_id is not None:
            stored = EvaluationRepository(session).get(gate.active_id, dataset.id)
            if stored is not None:
                gate.active = stored.metrics
            else:
                active = PromptRepository(session).get(gate.active_id, with_tensors=True)
                if active is not None and active.base_model_fingerprint == model.identity.fingerprint:
                    gate.active = evaluation.score(model, task, Artifact.from_bytes(active.tensors), examples)
                    gate.active_scored_now = True
        if policy == "if_better":
            gate.promoted = evaluation.better(task, gate.new, gate.active)
        return gate
