"""Turn an uploaded dataset (JSONL, CSV, or an already parsed JSON body) into validated examples.

Pure: bytes or parsed JSON in, `Example`s out, or one error that lists every bad line at once, so a
person can fix a file in one pass instead of one upload per mistake.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.errors import AppError, InvalidInput, PayloadTooLarge

FIELDS = ("input", "output")
MAX_REPORTED_ERRORS = 50

Format = Literal["jsonl", "csv"]
_FORMAT_BY_EXTENSION: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json-lines": "jsonl", ".csv": "csv"}
_FORMAT_BY_MEDIA_TYPE: dict[str, Format] = {
    **dict.fromkeys(("application/jsonl", "application/x-jsonl", "application/json-lines"), "jsonl"),
    **dict.fromkeys(("application/x-ndjson", "application/ndjson", "application/jsonlines"), "jsonl"),
    **dict.fromkeys(("text/csv", "application/csv", "text/x-csv"), "csv"),
}
SUPPORTED_FORMATS = (
    'JSONL (.jsonl, .ndjson: one {"input": ..., "output": ...} object per line) '
    "or CSV (.csv with the header input,output), encoded as UTF-8"
)


@dataclass(frozen=True)
class Example:
    input: str
    output: str


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


def parse_upload(data: bytes, filename: str | None, content_type: str | None, *, max_examples: int) -> list[Example]:
    """Parse an uploaded JSONL or CSV file; raises DatasetInvalid or an AppError with a stable code."""
    fmt = _format_from_name(filename) or _format_from_content_type(content_type)
    text = _decode(data, format_known=fmt is not None)
    if not text.strip():
        raise _empty()
    if fmt is None:
        fmt = _sniff(text, filename)
    lines = _split_lines(text)
    if fmt == "jsonl":
        return _parse_jsonl(lines, max_examples=max_examples)
    return _parse_csv(lines, max_examples=max_examples)


def parse_examples(items: Sequence[Any], *, max_examples: int) -> list[Example]:
    """Validate the examples of a JSON body ({"examples": [{"input": ..., "output": ...}]})."""
    if len(items) > max_examples:
        raise _too_large(max_examples)
    examples: list[Example] = []
    errors: list[LineError] = []
    for index, item in enumerate(items, start=1):  # counted from 1, like file lines
        problems = _object_problems(item)
        if problems:
            errors.append(LineError(index, "; ".join(problems), kind="example"))
        else:
            examples.append(Example(item["input"], item["output"]))
    return _finish(examples, errors)


def dataset_labels(examples: Iterable[Example]) -> list[str]:
    """Distinct outputs in first-seen order: what the API reports as a dataset's labels."""
    return list(dict.fromkeys(example.output for example in examples))


# --- format detection and decoding -------------------------------------------------------------------


def _format_from_name(filename: str | None) -> Format | None:
    return _FORMAT_BY_EXTENSION.get(os.path.splitext(filename or "")[1].lower())


def _format_from_content_type(content_type: str | None) -> Format | None:
    return _FORMAT_BY_MEDIA_TYPE.get((content_type or "").split(";")[0].strip().lower())


def _sniff(text: str, filename: str | None) -> Format:
    stripped = text[:65536].lstrip()  # a prefix: the first record is all sniffing needs
    if stripped.startswith("{"):
        return "jsonl"
    first_line = stripped.partition("\n")[0]
    if stripped.startswith("["):
        reason = "a JSON array is not an upload format; send the examples as a JSON body instead, or as"
    elif "," in first_line:
        return "csv"
    else:
        reason = "it looks like neither JSONL nor CSV; send"
    name = f'"{filename}"' if filename else "the upload"
    raise AppError(f"cannot read {name}: {reason} {SUPPORTED_FORMATS}", code="unsupported_format")


def _decode(data: bytes, *, format_known: bool) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetInvalid(
            [LineError(1, "starts with a UTF-16 byte order mark")],
            message="dataset is UTF-16 text; save it as UTF-8 and upload it again",
        )
    try:
        return data.decode("utf-8-sig")  # a leading BOM, as Excel writes it, is dropped
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start : exc.start + 1].hex()
        if not format_known:
            raise AppError(
                f"cannot read the upload: it is not UTF-8 text (line {line} has the byte 0x{byte}); "
                f"send {SUPPORTED_FORMATS}",
                code="unsupported_format",
            ) from None
        raise DatasetInvalid(
            [LineError(line, f"not valid UTF-8 (byte 0x{byte})")],
            message=f"dataset is not UTF-8 text: line {line} has the byte 0x{byte}; save it as UTF-8",
        ) from None


def _split_lines(text: str) -> list[str]:
    """Split on "\\n" only: str.splitlines() would also break at U+2028 and friends, legal inside values."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


# --- JSONL ---------------------------------------------------------------------------------------------


def _parse_jsonl(lines: list[str], *, max_examples: int) -> list[Example]:
    examples: list[Example] = []
    errors: list[LineError] = []
    records = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        records += 1
        if records > max_examples:
            raise _too_large(max_examples)
        try:
            item = json.loads(line, object_pairs_hook=_reject_duplicate_keys)
        except _DuplicateKey as exc:
            errors.append(LineError(number, f'field "{exc.key}" appears twice'))
            continue
        except json.JSONDecodeError as exc:
            errors.append(LineError(number, f"not valid JSON: {exc.msg} (column {exc.colno})"))
            continue
        except RecursionError:
            errors.append(LineError(number, "not valid JSON: nested too deeply"))
            continue
        problems = _object_problems(item)
        if problems:
            errors.append(LineError(number, "; ".join(problems)))
        else:
            examples.append(Example(item["input"], item["output"]))
    return _finish(examples, errors)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; a silently dropped "output" is a wrong label.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _object_problems(item: Any) -> list[str]:
    """Everything wrong with one would-be {"input", "output"} object; empty when it is valid."""
    if not isinstance(item, dict):
        return [f'expected an object with "input" and "output", got {_json_type(item)}']
    problems: list[str] = []
    missing = [name for name in FIELDS if name not in item]
    if missing:
        problems.append(f"missing field{'s' if len(missing) > 1 else ''} {_quoted(missing)}")
    extra = [str(name) for name in item if name not in FIELDS]
    if extra:
        problems.append(
            f'unexpected field{"s" if len(extra) > 1 else ""} {_quoted(extra)}; only "input" and "output" are allowed'
        )
    for name in FIELDS:
        if name not in item:
            continue
        value = item[name]
        if not isinstance(value, str):
            problems.append(f'field "{name}" must be a string, got {_json_type(value)}')
        else:
            problems.extend(_text_problems("field", name, value))
    return problems


# --- CSV -----------------------------------------------------------------------------------------------


def _parse_csv(lines: list[str], *, max_examples: int) -> list[Example]:
    # strict: an unclosed quote is an error instead of silently swallowing the rest of the file.
    reader = csv.reader(_with_newlines(lines), strict=True)
    header: list[str] | None = None
    order: tuple[int, int] = (0, 1)
    examples: list[Example] = []
    errors: list[LineError] = []
    records = 0
    while True:
        start = reader.line_num + 1  # a quoted value may span lines: report where the record begins
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(LineError(start, _csv_error_message(exc, reader.line_num >= len(lines))))
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            header = row
            order = _check_header(header, start)
            continue
        records += 1
        if records > max_examples:
            raise _too_large(max_examples)
        if len(row) != 2:
            hint = "; quote values that contain commas" if len(row) > 2 else ""
            errors.append(LineError(start, f"expected 2 columns, found {len(row)}{hint}"))
            continue
        values = {"input": row[order[0]], "output": row[order[1]]}
        problems = [problem for name in FIELDS for problem in _text_problems("column", name, values[name])]
        if problems:
            errors.append(LineError(start, "; ".join(problems)))
        else:
            examples.append(Example(values["input"], values["output"]))
    return _finish(examples, errors)


def _with_newlines(lines: list[str]) -> Iterator[str]:
    # The csv module needs line ends to tell a quoted newline from the end of a record.
    for line in lines:
        yield line + "\n"


def _check_header(header: list[str], line: int) -> tuple[int, int]:
    """Positions of the input and output columns; raises when the header is not exactly those two."""
    names = [name.strip() for name in header]
    problems: list[str] = []
    duplicated = [name for name in FIELDS if names.count(name) > 1]
    missing = [name for name in FIELDS if name not in names]
    extra = [name for name in names if name not in FIELDS]
    if duplicated:
        problems.append(f"header repeats column {_quoted(duplicated)}")
    if missing:
        problems.append(f"header is missing column{'s' if len(missing) > 1 else ''} {_quoted(missing)}")
    if extra:
        problems.append(f"header has unexpected column{'s' if len(extra) > 1 else ''} {_quoted(extra)}")
    if problems:
        found = ",".join(header)
        message = "; ".join(problems) + f' (found "{found}", expected "input,output")'
        raise DatasetInvalid([LineError(line, message)])
    return names.index("input"), names.index("output")


def _csv_error_message(exc: csv.Error, at_end: bool) -> str:
    if at_end and "unexpected end of data" in str(exc):
        return "a quoted value starting on this line is never closed"
    return f"bad CSV quoting: {exc} (wrap values containing quotes in quotes and double the inner quotes)"


# --- shared checks -------------------------------------------------------------------------------------


def _text_problems(kind: str, name: str, value: str) -> list[str]:
    if not value:
        return [f'{kind} "{name}" is empty']
    if value.isspace():
        return [f'{kind} "{name}" is only whitespace']
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; refusing here beats a 500 from the database later.
        return [f'{kind} "{name}" contains a NUL character']
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Reachable through a JSON escape like "\ud800": a lone surrogate, which no UTF-8 store accepts.
        return [f'{kind} "{name}" contains an unpaired surrogate escape']
    return []


def _finish(examples: list[Example], errors: list[LineError]) -> list[Example]:
    if errors:
        raise DatasetInvalid(errors)
    if not examples:
        raise _empty()
    return examples


def _empty() -> AppError:
    return InvalidInput("dataset has no examples", code="dataset_empty")


def _too_large(max_examples: int) -> AppError:
    return PayloadTooLarge(
        f"dataset has more than {max_examples} examples, the most one dataset may hold; split it",
        code="dataset_too_large",
    )


def _quoted(names: Iterable[str]) -> str:
    return " and ".join(f'"{name}"' for name in names)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):  # before the number check: bool is an int subclass
        return "a boolean"
    names = {type(None): "null", int: "a number", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), "an object" if isinstance(value, dict) else type(value).__name__)
