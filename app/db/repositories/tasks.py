"""Tasks and their prompt versions: a task's name, readiness and active jobs; a version's number, listing, and the
versions a prompt transfer may start from."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import defer

from app.db.models import Job, Prompt, Task
from app.db.repositories.jobs import ACTIVE_STATUSES
from app.db.repositories.tenancy import Repository


class TaskRepository(Repository[Task]):
    model = Task

    def get(self, task_id: int) -> Task | None:
        """The tenant's task of this id."""
        return self._get(task_id)

    def get_by_name(self, name: str) -> Task | None:
        """The tenant's task of this name."""
        return self.session.scalar(self._own(select(Task).where(Task.name == name)))

    def list(self, *, limit: int, offset: int) -> Sequence[Task]:
        """The tenant's tasks, by id."""
        return self.session.scalars(self._own(select(Task)).order_by(Task.id).limit(limit).offset(offset)).all()

    def ready(self, *, limit: int) -> Sequence[Task]:
        """The tenant's tasks with an active prompt version, by id."""
        stmt = self._own(select(Task)).where(Task.active_prompt_id.is_not(None)).order_by(Task.id)
        return self.session.scalars(stmt.limit(limit)).all()

    def with_active_jobs(self, task_ids: Sequence[int]) -> set[int]:
        """Ids among task_ids that have a queued or running job."""
        if not task_ids:
            return set()
        rows = self.session.scalars(
            select(Job.task_id).where(Job.task_id.in_(task_ids), Job.status.in_(ACTIVE_STATUSES)).distinct()
        )
        return {task_id for task_id in rows if task_id is not None}

    def lock(self, task_id: int) -> Task | None:
        """The tenant's task, re-read with its row held for the transaction (PostgreSQL; SQLite serialises writers):
        two jobs queued at once for a task without an evaluation set see each other's holdout, not two."""
        stmt = self._own(select(Task).where(Task.id == task_id)).with_for_update()
        return self.session.scalar(stmt.execution_options(populate_existing=True))

    def trained_on(self, task_id: int, dataset_id: int) -> tuple[builtins.list[int], builtins.list[int]]:
        """The task's stored versions trained on the dataset, and its queued or running jobs that train on it."""
        versions = select(Prompt.id).where(Prompt.task_id == task_id, Prompt.dataset_id == dataset_id)
        jobs = select(Job.id).where(
            Job.task_id == task_id, Job.dataset_id == dataset_id, Job.status.in_(ACTIVE_STATUSES)
        )
        return (
            builtins.list(self.session.scalars(versions.order_by(Prompt.id))),
            builtins.list(self.session.scalars(jobs.order_by(Job.id))),
        )


class PromptRepository(Repository[Prompt]):
    model = Prompt

    def add_version(self, prompt: Prompt) -> Prompt:
        """Insert the prompt as its task's next version number (a tenant's meta-initialisations count among
        themselves)."""
        owner = (
            (Prompt.task_id.is_(None) & (Prompt.tenant == prompt.tenant))
            if prompt.task_id is None
            else Prompt.task_id == prompt.task_id
        )
        latest = self.session.scalar(select(func.max(Prompt.version)).where(owner))
        prompt.version = (latest or 0) + 1
        return self.add(prompt)

    def get(self, prompt_id: int, *, with_tensors: bool = False) -> Prompt | None:
        """The tenant's version of this id; its tensors only when asked for."""
        return self._get(prompt_id, [] if with_tensors else [defer(Prompt.tensors)])

    def list(self, *, task_id: int | None, limit: int, offset: int, kind: str | None = None) -> Sequence[Prompt]:
        """The tenant's versions (of one task, of one kind), by id, without their tensors."""
        stmt = self._own(select(Prompt)).options(defer(Prompt.tensors)).order_by(Prompt.id).limit(limit).offset(offset)
        if task_id is not None:
            stmt = stmt.where(Prompt.task_id == task_id)
        if kind is not None:
            stmt = stmt.where(Prompt.kind == kind)
        return self.session.scalars(stmt).all()

    def compatible(
        self, *, method: str, fingerprint: str, shapes: dict[str, builtins.list[int]], limit: int
    ) -> Sequence[Prompt]:
        """The newest `limit` versions (any task of the tenant, and its meta-initialisations) of this method and base
        model whose tensors have these shapes, tensors loaded: the candidates of a prompt transfer."""
        stmt = self._own(
            select(Prompt)
            .where(Prompt.method == method, Prompt.base_model_fingerprint == fingerprint)
            .order_by(Prompt.id.desc())
        )
        found: builtins.list[Prompt] = []
        # Shapes are JSON, compared here rather than in SQL (JSON equality differs between the backends);
        # only metadata is read until a version matches.
        for prompt in self.session.scalars(stmt.options(defer(Prompt.tensors))):
            if prompt.shapes == shapes:
                found.append(prompt)
                if len(found) == limit:
                    break
        return found

    def latest_for_task(self, task_id: int, *, excluding: int | None = None) -> Prompt | None:
        """The task's newest version (but `excluding`), without its tensors."""
        stmt = select(Prompt).options(defer(Prompt.tensors)).where(Prompt.task_id == task_id)
        if excluding is not None:
            stmt = stmt.where(Prompt.id != excluding)
        return self.session.scalar(stmt.order_by(Prompt.version.desc()).limit(1))
