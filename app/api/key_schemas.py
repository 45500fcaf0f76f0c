"""Request and response bodies of the key and audit endpoints (admin scope)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import Strict
from app.services.keys import TENANT

Scope = Literal["read", "infer", "train", "admin"]


class KeyLimits(Strict):
    """Overrides of the service's default limits for one key (PROMPTBANK_KEY_*); 0 means no limit."""

    requests_per_second: float | None = Field(default=None, ge=0, le=1e6, strict=True)
    active_jobs: int | None = Field(default=None, ge=0, le=1_000_000, strict=True)
    stored_bytes: int | None = Field(default=None, ge=0, le=2**53, strict=True)
    dataset_bytes: int | None = Field(default=None, ge=0, le=2**53, strict=True)


class KeyCreate(Strict):
    tenant: str = Field(min_length=1, max_length=64, pattern=TENANT, description="Who the key acts for.")
    scopes: list[Scope] = Field(min_length=1, max_length=4, description="read, infer, train and/or admin.")
    name: str | None = Field(default=None, max_length=200, description="A note to tell keys apart.")
    limits: KeyLimits | None = None


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    tenant: str
    scopes: list[str]
    prefix: str = Field(description="The key's first characters.")
    name: str | None
    limits: dict[str, Any] | None
    operator: bool = Field(description="The operator's key: manages every tenant's keys and audit log.")
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(BaseModel):
    id: int
    key: str = Field(description="The key itself: shown only in this response, never stored.")
    tenant: str
    scopes: list[str]
    name: str | None = None
    limits: dict[str, Any] | None = None


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    tenant: str
    actor: str
    action: str
    resource: str
    resource_id: int | None
    detail: dict[str, Any]
    created_at: datetime
