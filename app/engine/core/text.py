"""How a task turns text into token ids: templates, targets, and label tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["classification", "generation"]

PLACEHOLDER = "{input}"

DEFAULT_TEMPLATES: dict[str, str] = {
    "classification": "Input: {input}\nLabel:",
    "generation": "Input: {input}\nOutput:",
}


class Tokenizes(Protocol):
    """What this module needs from a FrozenModel (kept structural so text.py stays torch-free)."""

    eos_token_id: int
    lead_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, its prompt template with {input}, and its labels (classification)."""

    kind: Kind
    template: str
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept any sequence of labels but store a tuple, so a spec stays hashable and immutable.
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.kind not in ("classification", "generation"):
            raise ValueError(f'kind must be "classification" or "generation", not "{self.kind}".')
        if PLACEHOLDER not in self.template:
            raise ValueError(f"the template must contain the {PLACEHOLDER} placeholder.")
        if self.kind == "classification":
            if len(self.labels) < 2:
                raise ValueError("a classification task needs at least two labels.")
            if any(not label.strip() for label in self.labels):
                raise ValueError("labels must not be empty or blank.")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels must be distinct.")


@dataclass(frozen=True)
class EncodedExample:
    """One row before batching: the rendered prompt's ids and the ids the model must produce after them."""

    input_ids: list[int]
    target_ids: list[int]


def render(template: str, text: str) -> str:
    """Put the input into the template (a plain replace: templates and inputs may contain braces)."""
    return template.replace(PLACEHOLDER, text)


def target_text(rendered: str, output: str) -> str:
    """The output as the model should continue the prompt: one leading space unless the prompt ends in space."""
    # "Label:" + " positive" tokenizes " positive" as the word token the model knows, not "positive".
    if not output or not rendered or rendered[-1].isspace():
        return output
    return " " + output


def output_text(rendered: str, generated: str) -> str:
    """Undo target_text on generated text: drop the single leading space target_text would have added."""
    if rendered and not rendered[-1].isspace() and generated.startswith(" "):
        return generated[1:]
    return generated


def encode_example(frozen: Tokenizes, spec: TaskSpec, text: str, output: str | None) -> EncodedExample:
    """Tokenize prompt and target separately (the boundary inference scores labels at); eos ends outputs.

    The input opens with the tokens the tokenizer puts before any text (Gemma's <bos>, which that model reads
    badly without): after the row's prompt, where PEFT's prompts leave them too.
    """
    rendered = render(spec.template, text)
    input_ids = [*frozen.lead_ids, *frozen.encode(rendered)]
    if output is None:
        return EncodedExample(input_ids=input_ids, target_ids=[])
    target_ids = frozen.encode(target_text(rendered, output))
    if spec.kind == "generation":
        # Generation must learn to stop; a label needs no stop because inference only scores labels.
        target_ids = [*target_ids, frozen.eos_token_id]
    return EncodedExample(input_ids=input_ids, target_ids=target_ids)


def label_token_ids(frozen: Tokenizes, spec: TaskSpec) -> list[list[int]]:
    """The token ids of each label as a training target would hold them (no eos), in spec.labels order."""
    # Only the rendered prompt's last character matters, and that comes from the template unless the
    # template ends with {input}; a stand-in word plays an input that does not end in whitespace.
    rendered = render(spec.template, "x")
    return [frozen.encode(target_text(rendered, label)) for label in spec.labels]


def context_template(spec: TaskSpec, instruction: str, examples: Sequence[tuple[str, str]]) -> str:
    """A template that puts an English instruction and solved examples before the task's own template: how the
    frozen model reads a task in its context (a context-distillation teacher, a few-shot baseline)."""
    shots = [
        render(spec.template, text) + target_text(render(spec.template, text), output) for text, output in examples
    ]
    return "\n\n".join([instruction.strip(), *shots, spec.template])
