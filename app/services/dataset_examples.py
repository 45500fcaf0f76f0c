"""What a dataset example is, what makes one valid, and the one error that lists every bad record.

Pure: shared by the file readers in dataset_parsing and by JSON bodies, which arrive already parsed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.errors import AppError, InvalidInput, PayloadTooLarge
from app.text_checks import text_problem

FIELDS = ("input", "output")
MAX_REPORTED_ERRORS = 50


@dataclass(frozen=True)
class Example:
    input: str
    output: str | None  # None in an unlabeled dataset: inputs only, for distillation from a teacher


@dataclass(frozen=True)
class LineError:
    """One bad record: `line` counts from 1, in the file's lines or in a JSON body's examples (kind "example")."""

    line: int
    message: str
    kind: Literal["line", "example"] = "line"

    @property
    def where(self) -> str:
        return f"{self.kind} {self.line}"

    def as_detail(self) -> dict[str, Any]:
        return {self.kind: self.line, "message": self.message}


class DatasetInvalid(InvalidInput):
    """The dataset has bad records; `details` lists the first MAX_REPORTED_ERRORS of them."""

    code = "dataset_invalid"

    def __init__(self, errors: Sequence[LineError], *, message: str | None = None) -> None:
        if not errors:
            raise ValueError("DatasetInvalid needs at least one error")
        self.errors = list(errors)
        shown = self.errors[:MAX_REPORTED_ERRORS]
        if message is None:
            first = self.errors[0]
            count = len(self.errors)
            noun = f"invalid {first.kind}{'' if count == 1 else 's'}"
            listed = f" (details list the first {len(shown)})" if count > len(shown) else ""
            message = f"dataset has {count} {noun}{listed}; first: {first.where}: {first.message}"
        super().__init__(message, details=[error.as_detail() for error in shown])


def parse_examples(items: Sequence[Any], *, max_examples: int) -> list[Example]:
    """Validate the examples of a JSON body ({"examples": [{"input": ..., "output": ...}]}; "output" may be left
    out of every example: an unlabeled dataset)."""
    if len(items) > max_examples:
        raise dataset_too_large(max_examples)
    examples: list[Example] = []
    numbers: list[int] = []
    errors: list[LineError] = []
    for index, item in enumerate(items, start=1):  # counted from 1, like file lines
        problems = object_problems(item)
        if problems:
            errors.append(LineError(index, "; ".join(problems), kind="example"))
        else:
            examples.append(Example(item["input"], item.get("output")))
            numbers.append(index)
    return finish_examples(examples, errors, numbers, kind="example")


def dataset_labels(examples: Iterable[Example]) -> list[str]:
    """Distinct outputs in first-seen order: what the API reports as a dataset's labels."""
    return list(dict.fromkeys(example.output for example in examples if example.output is not None))


# --- checks shared with the file readers ----------------------------------------------------------------


def object_problems(item: Any) -> list[str]:
    """Everything wrong with one would-be {"input", "output"} object; empty when it is valid."""
    if not isinstance(item, dict):
        return [f'expected an object with "input" and "output", got {_json_type(item)}']
    problems: list[str] = []
    # "output" may be missing: whether every example leaves it out is checked over the whole dataset.
    missing = [name for name in FIELDS if name not in item and name != "output"]
    if missing:
        problems.append(f"missing field{'s' if len(missing) > 1 else ''} {quoted(missing)}")
    extra = [str(name) for name in item if name not in FIELDS]
    if extra:
        problems.append(
            f'unexpected field{"s" if len(extra) > 1 else ""} {quoted(extra)}; only "input" and "output" are allowed'
        )
    for name in FIELDS:
        if name not in item:
            continue
        value = item[name]
        if not isinstance(value, str):
            problems.append(f'field "{name}" must be a string, got {_json_type(value)}')
        else:
            problems.extend(text_problems("field", name, value))
    return problems


def text_problems(kind: str, name: str, value: str) -> list[str]:
    """What is wrong with one text value (a JSON field or a CSV column); empty when it is valid."""
    if not value:
        return [f'{kind} "{name}" is empty']
    if value.isspace():
        return [f'{kind} "{name}" is only whitespace']
    problem = text_problem(value)  # NUL or a lone surrogate: refused here rather than a 500 from the store later
    return [f'{kind} "{name}" {problem}'] if problem else []


def finish_examples(
    examples: list[Example], errors: list[LineError], lines: Sequence[int] | None = None, kind: str = "line"
) -> list[Example]:
    """The examples, or DatasetInvalid listing every error, or dataset_empty when there are none.

    A dataset is labeled (every example has an output) or unlabeled (none has); a mix is refused, naming the
    examples without one. `lines` numbers the examples as the errors do (default: 1, 2, ...).
    """
    unlabeled = [i for i, example in enumerate(examples) if example.output is None]
    if unlabeled and len(unlabeled) < len(examples):
        numbers = lines or range(1, len(examples) + 1)
        errors = errors + [
            LineError(
                numbers[i],
                'missing field "output" (other examples have one)',
                kind=kind,  # type: ignore[arg-type]
            )
            for i in unlabeled
        ]
        errors.sort(key=lambda error: error.line)
    if errors:
        raise DatasetInvalid(errors)
    if not examples:
        raise dataset_empty()
    return examples


def dataset_empty() -> AppError:
    """The error for a dataset without a single example."""
    return InvalidInput("dataset has no examples", code="dataset_empty")


def dataset_too_large(max_examples: int) -> AppError:
    """The error for a dataset over the per-dataset example limit."""
    return PayloadTooLarge(
        f"dataset has more than {max_examples} examples, the most one dataset may hold; split it",
        code="dataset_too_large",
    )


def quoted(names: Iterable[str]) -> str:
    """Names for a message, each in double quotes, joined by "and"."""
    return " and ".join(f'"{name}"' for name in names)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):  # before the number check: bool is an int subclass
        return "a boolean"
    names = {type(None): "null", int: "a number", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), "an object" if isinstance(value, dict) else type(value).__name__)
