"""Versions' scores on evaluation datasets (the evaluation gate). Reached through a version of the session's
tenant: callers hold a task or prompt already read in the tenant's scope."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Prompt, PromptEvaluation


class EvaluationRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, prompt_id: int, dataset_id: int) -> PromptEvaluation | None:
        """A version's scores on a dataset, if it was scored on it."""
        stmt = select(PromptEvaluation).where(
            PromptEvaluation.prompt_id == prompt_id, PromptEvaluation.dataset_id == dataset_id
        )
        return self.session.scalars(stmt).one_or_none()

    def version_exists(self, prompt_id: int) -> bool:
        """Whether the version is still stored (any tenant: the caller read it in its own)."""
        return self.session.get(Prompt, prompt_id) is not None

    def add(self, prompt_id: int, dataset_id: int, metrics: dict[str, Any]) -> PromptEvaluation:
        """Store a version's scores on a dataset."""
        row = PromptEvaluation(prompt_id=prompt_id, dataset_id=dataset_id, metrics=metrics)
        self.session.add(row)
        self.session.flush()
        return row

    def of_task(self, task_id: int, dataset_id: int) -> Sequence[tuple[Prompt, PromptEvaluation]]:
        """Every version of the task scored on the dataset, oldest version first."""
        stmt = (
            select(Prompt, PromptEvaluation)
            .join(PromptEvaluation, PromptEvaluation.prompt_id == Prompt.id)
            .where(Prompt.task_id == task_id, PromptEvaluation.dataset_id == dataset_id)
            .order_by(Prompt.version)
        )
        return [(prompt, evaluation) for prompt, evaluation in self.session.execute(stmt).all()]
