"""The prompt methods: one module each, registered on import; `TrainConfigUnion` is the job hyperparameters' type.

Adding a method is one new module here (plus its tests): it is found and imported below, and its config joins the
discriminated union on `method` that POST /v1/jobs validates.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Any, TypeVar, Union

from pydantic import BaseModel, Discriminator, Tag, create_model

from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments
from app.engine.formats.artifact import Artifact
from app.engine.methods.base import REGISTRY, Method, PromptModule, TrainConfig

_SHARED = {"base", "init"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _SHARED:
        importlib.import_module(f"{__name__}.{_module.name}")

DEFAULT_METHOD = "prompt"
OptionsT = TypeVar("OptionsT", bound=BaseModel)


def _method_of(value: Any) -> str:
    """The union's discriminator: the `method` field, "prompt" when absent (jobs stored before methods existed)."""
    if isinstance(value, dict):
        return str(value.get("method", DEFAULT_METHOD))
    return str(getattr(value, "method", DEFAULT_METHOD))


def config_union(options: type[BaseModel] | None = None) -> Any:
    """The discriminated union (on `method`) of every method's config, each joined with `options` when given:
    the hyperparameters of a job type that adds its own (a distill job's alpha, a meta_init job's order)."""
    members = []
    for name, method in sorted(REGISTRY.items()):
        config: type[BaseModel] = method.config_type
        if options is not None:
            config = create_model(f"{options.__name__}{config.__name__}", __base__=(config, options))
        members.append(Annotated[config, Tag(name)])
    return Annotated[
        Union[tuple(members)],  # noqa: UP007
        Discriminator(
            _method_of,
            custom_error_type="unknown_method",
            custom_error_message=("unknown method; use one of: " + ", ".join(sorted(REGISTRY))),
        ),
    ]


TrainConfigUnion = config_union()


def get_method(name: str) -> Method:
    """The registered method called name; ValueError listing the known ones."""
    method = REGISTRY.get(name)
    if method is None:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(REGISTRY))}.")
    return method


def parse_config(data: dict[str, Any]) -> TrainConfig:
    """Hyperparameters (a job row's JSON) as the config of their method."""
    method = get_method(_method_of(data))
    return method.config_type.model_validate({"method": method.name, **data})


def split_config(
    combined: BaseModel, options: type[OptionsT], *, exclude: frozenset[str] = frozenset()
) -> tuple[TrainConfig, OptionsT]:
    """A body's hyperparameters validated by `config_union(options)` as its two parts, the method's config and the
    job kind's options (done once, at the edge; each part is stored on its own). Fields in `exclude` (those a
    kind replaces with its own) are left to the method's defaults."""
    data = combined.model_dump(mode="json", exclude=set(exclude))
    config_type = get_method(_method_of(data)).config_type
    config = config_type.model_validate({k: v for k, v in data.items() if k in config_type.model_fields})
    return config, options.model_validate({k: v for k, v in data.items() if k in options.model_fields})


def load_segments(frozen: FrozenModel, artifact: Artifact) -> Segments:
    """How a stored prompt version enters a pass (what the pool resolves on a miss)."""
    return get_method(artifact.method).load(frozen, artifact).segments()


__all__ = [
    "DEFAULT_METHOD",
    "REGISTRY",
    "Method",
    "PromptModule",
    "TrainConfig",
    "TrainConfigUnion",
    "config_union",
    "get_method",
    "load_segments",
    "parse_config",
    "split_config",
]
