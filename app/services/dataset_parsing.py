"""Read an uploaded dataset (JSONL or CSV bytes) into validated examples.

Pure: bytes in, `Example`s out, or one error that lists every bad line at once, so a person can fix a
file in one pass instead of one upload per mistake. What makes an example valid lives in dataset_examples.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from typing import Any, Literal

from app.errors import AppError
from app.services.dataset_examples import (
    FIELDS,
    DatasetInvalid,
    Example,
    LineError,
    dataset_empty,
    dataset_too_large,
    finish_examples,
    object_problems,
    quoted,
    text_problems,
)

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


def parse_upload(data: bytes, filename: str | None, content_type: str | None, *, max_examples: int) -> list[Example]:
    """Parse an uploaded JSONL or CSV file; raises DatasetInvalid or an AppError with a stable code."""
    fmt = _format_from_name(filename) or _format_from_content_type(content_type)
    text = _decode(data, format_known=fmt is not None)
    if not text.strip():
        raise dataset_empty()
    if fmt is None:
        fmt = _sniff(text, filename)
    lines = _split_lines(text)
    if fmt == "jsonl":
        return _parse_jsonl(lines, max_examples=max_examples)
    return _parse_csv(lines, max_examples=max_examples)


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
    numbers: list[int] = []
    errors: list[LineError] = []
    records = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        records += 1
        if records > max_examples:
            raise dataset_too_large(max_examples)
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
        problems = object_problems(item)
        if problems:
            errors.append(LineError(number, "; ".join(problems)))
        else:
            examples.append(Example(item["input"], item.get("output")))
            numbers.append(number)
    return finish_examples(examples, errors, numbers)


def loads_without_duplicates(text: str | bytes) -> Any:
    """json.loads that refuses an object with a key twice (json keeps the last: a silently dropped "output" is a
    wrong label). Raises ValueError saying which key, or json.JSONDecodeError / RecursionError as json does."""
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKey as exc:
        raise ValueError(f'field "{exc.key}" appears twice in one object') from None


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


# --- CSV -----------------------------------------------------------------------------------------------


def _parse_csv(lines: list[str], *, max_examples: int) -> list[Example]:
    # strict: an unclosed quote is an error instead of silently swallowing the rest of the file.
    reader = csv.reader(_with_newlines(lines), strict=True)
    header: list[str] | None = None
    order: tuple[int, int | None] = (0, 1)
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
            raise dataset_too_large(max_examples)
        columns = 2 if order[1] is not None else 1
        if len(row) != columns:
            hint = "; quote values that contain commas" if len(row) > columns else ""
            errors.append(LineError(start, f"expected {columns} column{'s' * (columns > 1)}, found {len(row)}{hint}"))
            continue
        values = {"input": row[order[0]], "output": row[order[1]] if order[1] is not None else None}
        problems = [
            problem
            for name in FIELDS
            if (value := values[name]) is not None
            for problem in text_problems("column", name, value)
        ]
        if problems:
            errors.append(LineError(start, "; ".join(problems)))
        else:
            examples.append(Example(values["input"], values["output"]))  # type: ignore[arg-type]
    return finish_examples(examples, errors)


def _with_newlines(lines: list[str]) -> Iterator[str]:
    # The csv module needs line ends to tell a quoted newline from the end of a record.
    for line in lines:
        yield line + "\n"


def _check_header(header: list[str], line: int) -> tuple[int, int | None]:
    """Positions of the input and output columns (None: an unlabeled dataset, the header "input" alone); raises
    when the header is not exactly those."""
    names = [name.strip() for name in header]
    if names == ["input"]:
        return 0, None
    problems: list[str] = []
    duplicated = [name for name in FIELDS if names.count(name) > 1]
    missing = [name for name in FIELDS if name not in names]
    extra = [name for name in names if name not in FIELDS]
    if duplicated:
        problems.append(f"header repeats column {quoted(duplicated)}")
    if missing:
        problems.append(f"header is missing column{'s' if len(missing) > 1 else ''} {quoted(missing)}")
    if extra:
        problems.append(f"header has unexpected column{'s' if len(extra) > 1 else ''} {quoted(extra)}")
    if problems:
        found = ",".join(header)
        message = "; ".join(problems) + f' (found "{found}", expected "input,output", or "input" for inputs only)'
        raise DatasetInvalid([LineError(line, message)])
    return names.index("input"), names.index("output")


def _csv_error_message(exc: csv.Error, at_end: bool) -> str:
    if at_end and "unexpected end of data" in str(exc):
        return "a quoted value starting on this line is never closed"
    return f"bad CSV quoting: {exc} (wrap values containing quotes in quotes and double the inner quotes)"
