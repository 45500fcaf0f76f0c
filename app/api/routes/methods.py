"""The prompt methods and their hyperparameters, for clients that build a training form (the dashboard does)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from app.api.deps import AUTH_RESPONSES, READ
from app.api.schemas import MethodList, MethodOut
from app.services.methods import list_methods

router = APIRouter(prefix="/v1/methods", tags=["methods"], responses=AUTH_RESPONSES)


@router.get("", dependencies=[READ])
def methods() -> MethodList:
    """Every prompt method a job can train: its description, its config's JSON schema and its default values."""
    return MethodList(data=[MethodOut(**asdict(info)) for info in list_methods()])
