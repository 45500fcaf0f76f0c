"""What a distill job takes besides the student's method: its teacher and its own hyperparameters."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.bodies import PromptIds, Strict


class Distillation(BaseModel):
    """A distill job's own hyperparameters (beside the student's method and training loop); they arrive in the
    body's `hyperparameters` with the method's."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Weight of the gold outputs' cross-entropy; 1 - alpha weighs the KL to the teacher. 0 trains "
        "on the teacher alone and accepts datasets without outputs.",
    )
    temperature: float = Field(default=2.0, gt=0, le=100, description="Softens both distributions in the KL term.")
    generations: int = Field(
        default=1, ge=1, le=10, description="Distil again with each student as the next teacher (G0 -> G1 -> ...)."
    )
    top_k: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Generation tasks: the teacher's most likely next tokens kept per output position.",
    )
    max_new_tokens: int = Field(
        default=32, ge=1, le=512, description="Generation tasks without outputs: length of the teacher's outputs."
    )


class PromptTeacher(Strict):
    prompts: PromptIds = Field(description="Stored versions of the task; several are averaged (an ensemble).")


class ShotExample(Strict):
    input: str = Field(min_length=1, max_length=4000)
    output: str = Field(min_length=1, max_length=4000)


class ContextTeacher(Strict):
    instruction: str = Field(
        min_length=1, max_length=4000, description="The frozen model reads this English instruction before each input."
    )
    examples: list[ShotExample] = Field(
        default_factory=list, max_length=32, description="Solved examples placed after the instruction (few-shot)."
    )

    @model_validator(mode="after")
    def _no_placeholder(self) -> ContextTeacher:
        texts = [self.instruction, *(text for example in self.examples for text in (example.input, example.output))]
        if any("{input}" in text for text in texts):
            raise ValueError('the instruction and examples must not contain "{input}"; it marks where the input goes.')
        return self


class DistillOptions(BaseModel):
    """What a distill job stores in Job.options."""

    teacher: PromptTeacher | ContextTeacher
    distillation: Distillation = Field(default_factory=Distillation)
