"""Building blocks of request bodies, shared by the HTTP schemas (app/api/schemas.py) and the job kinds
(workers/jobs/), which declare their own POST /v1/jobs variant."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.db.base import MAX_ID
from app.text_checks import refuse_unstorable

RowId = Annotated[int, Field(ge=1, le=MAX_ID)]
PromptIds = Annotated[list[RowId], Field(min_length=1, max_length=16)]


class Strict(BaseModel):
    """A request body: unknown fields are refused, and so is text no store or tokenizer can hold."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        return refuse_unstorable(data)


class JobCreateBase(Strict):
    """What every POST /v1/jobs body takes besides its kind's fields."""

    type: str  # each kind's body narrows it to Literal[its name]: the union's discriminator
    priority: int = Field(default=0, ge=-100, le=100, description="Higher runs first.")
    promote: Literal["always", "if_better", "never"] | None = Field(
        default=None,
        description='Whether the version the job stores becomes active: "always", "if_better" (it beats the active '
        'version on the task\'s evaluation dataset), "never" (stored inactive); default "if_better" for tune, '
        '"always" for the others.',
    )
