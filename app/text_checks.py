"""What text the service can store and tokenise: no NUL (PostgreSQL text cannot hold it) and no lone surrogate
(no UTF-8 store or tokenizer accepts one; JSON can carry one as an escape like "\\ud800"). Pure: used by the API's
request models and by the method configs alike."""

from __future__ import annotations

from typing import Any


def text_problem(value: str) -> str | None:
    """Why value cannot be stored, or None."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate escape"
    return None


def refuse_unstorable(data: Any) -> Any:
    """data unchanged, or ValueError naming what no store can hold (a pydantic "before" validator's body)."""
    problem = first_text_problem(data)
    if problem:
        raise ValueError(f"a text value {problem}; remove it")
    return data


def first_text_problem(value: Any) -> str | None:
    """The first unstorable string anywhere in a JSON-like value (strings, lists, dicts, keys included)."""
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, dict):
        for key, item in value.items():
            found = first_text_problem(key) or first_text_problem(item)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for item in value:
            found = first_text_problem(item)
            if found:
                return found
    return None
