"""The job types POST /v1/jobs accepts, and the options each takes besides the method's hyperparameters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

JOB_TYPES = ("train", "length_search")
JobType = Literal["train", "length_search"]


class LengthSearch(BaseModel):
    """A length search's options (POST /v1/jobs `search`)."""

    model_config = ConfigDict(extra="forbid")

    lengths: list[int] | Literal["from_init_text"] = Field(
        default_factory=lambda: [1, 5, 10, 20, 50],
        description='Prompt lengths to train, or "from_init_text": t/4, t/2, t and 2t for the init text\'s t tokens.',
    )
    tolerance: float = Field(
        default=0.01, ge=0, le=1, description="Keep the shortest length scoring within this of the best."
    )

    @field_validator("lengths")
    @classmethod
    def _check_lengths(cls, value: list[int] | str) -> list[int] | str:
        if isinstance(value, list):
            if not 1 <= len(value) <= 8:
                raise ValueError("give between 1 and 8 lengths.")
            if any(not 1 <= n <= 256 for n in value):
                raise ValueError("every length must be between 1 and 256.")
        return value
