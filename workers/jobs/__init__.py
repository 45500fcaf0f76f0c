"""The job kinds: one module (or package) each, found and imported below; POST /v1/jobs and the worker know kinds
only through KINDS. Adding a kind is one new module that sets `KIND = ItsKind()` (plus its tests and docs)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag

from app.errors import InvalidInput
from workers.jobs.base import JobContext, JobKind, Trained

_SHARED = {"base"}


def _discover() -> dict[str, JobKind]:
    """Every kind module's KIND, "train" (the default type) first, then by name."""
    found: dict[str, JobKind] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name in _SHARED:
            continue
        kind = getattr(importlib.import_module(f"{__name__}.{module.name}"), "KIND", None)
        if not isinstance(kind, JobKind):
            raise TypeError(f"workers/jobs/{module.name} sets no KIND (a JobKind instance)")
        if kind.name in found:
            raise TypeError(f"two job kinds are called {kind.name!r}")
        found[kind.name] = kind
    return {name: found[name] for name in sorted(found, key=lambda name: (name != "train", name))}


KINDS: dict[str, JobKind] = _discover()


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
