"""The job kinds: one file (or package) each, registered here; POST /v1/jobs and the worker know kinds only
through KINDS. Adding a kind is one new module plus its line below (and its tests and docs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag

from app.errors import InvalidInput
from workers.jobs.base import JobContext, JobKind, Trained
from workers.jobs.distill import Distill
from workers.jobs.length_search import LengthSearchKind
from workers.jobs.meta_init import MetaInit
from workers.jobs.train import Train

KINDS: dict[str, JobKind] = {kind.name: kind for kind in (Train(), LengthSearchKind(), Distill(), MetaInit())}


def job_kind(name: str) -> JobKind:
    """The registered kind called name; InvalidInput listing the known ones."""
    kind = KINDS.get(name)
    if kind is None:
        raise InvalidInput(f"unknown job type {name!r}; use one of: {', '.join(KINDS)}", code="unknown_job_type")
    return kind


def _job_type(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "train"))
    return str(getattr(value, "type", "train"))


if TYPE_CHECKING:  # what every body has; the union below is built at run time
    from app.bodies import JobCreateBase as JobCreate
else:
    # The POST /v1/jobs body: a discriminated union on `type` of every kind's Body ("train" when absent).
    JobCreate = Annotated[
        Union[tuple(Annotated[kind.Body, Tag(name)] for name, kind in KINDS.items())],  # noqa: UP007
        Discriminator(
            _job_type,
            custom_error_type="unknown_job_type",
            custom_error_message="unknown job type; use one of: " + ", ".join(KINDS),
        ),
    ]

__all__ = ["KINDS", "JobContext", "JobCreate", "JobKind", "Trained", "job_kind"]
