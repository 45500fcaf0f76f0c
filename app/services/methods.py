"""The prompt methods a job can train, read off the registry (app/engine/methods/): what GET /v1/methods lists."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from app.engine.methods import REGISTRY


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    cacheable: str
    config_schema: dict[str, Any]
    defaults: dict[str, Any]


@cache  # the registry is complete once app.engine.methods is imported, and never changes after
def list_methods() -> tuple[MethodInfo, ...]:
    """Every registered method, by name: its config's JSON schema and the values a job gets for omitted fields."""
    infos = []
    for name, method in sorted(REGISTRY.items()):
        config = method.config_type
        infos.append(
            MethodInfo(
                name=name,
                description=config.model_fields["method"].description or "",
                cacheable=method.cacheable,
                config_schema=config.model_json_schema(),
                defaults=config.model_validate({"method": name}).model_dump(mode="json"),
            )
        )
    return tuple(infos)
