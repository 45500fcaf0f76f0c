"""Dataset uploads and JSON bodies become examples, or one error naming every bad line."""

from __future__ import annotations

import json

import pytest

from app.errors import AppError
from app.services.dataset_examples import (
    MAX_REPORTED_ERRORS,
    DatasetInvalid,
    Example,
    LineError,
    dataset_labels,
    parse_examples,
)
from app.services.dataset_parsing import parse_upload

LIMIT = 1000


def jsonl(*objects: object) -> bytes:
    return "\n".join(json.dumps(item, ensure_ascii=False) for item in objects).encode()


def upload(data: bytes | str, filename: str | None = "train.jsonl", content_type: str | None = None):
    raw = data.encode() if isinstance(data, str) else data
    return parse_upload(raw, filename, content_type, max_examples=LIMIT)


def invalid(data: bytes | str, filename: str | None = "train.jsonl", content_type: str | None = None):
    with pytest.raises(DatasetInvalid) as caught:
        upload(data, filename, content_type)
    assert caught.value.code == "dataset_invalid"
    assert caught.value.status_code == 422
    return caught.value


def refused(data: bytes | str, filename: str | None = "train.jsonl", content_type: str | None = None):
    with pytest.raises(AppError) as caught:
        upload(data, filename, content_type)
    assert not isinstance(caught.value, DatasetInvalid)
    return caught.value


# --- good paths ----------------------------------------------------------------------------------------


def test_jsonl_upload_gives_examples_in_file_order():
    data = jsonl({"input": "great film", "output": "positive"}, {"input": "dull", "output": "negative"})
    assert upload(data) == [Example("great film", "positive"), Example("dull", "negative")]


def test_jsonl_blank_lines_crlf_and_unicode_are_handled():
    first = '{"input": "café \u2028 😀", "output": "a"}'.encode()
    data = b"\n" + first + b'\r\n\r\n   \n{"output": "b", "input": "x"}\r\n'
    assert upload(data) == [Example("café \u2028 😀", "a"), Example("x", "b")]


def test_values_keep_their_whitespace():
    data = jsonl({"input": "  padded\ttext  ", "output": " positive"})
    assert upload(data) == [Example("  padded\ttext  ", " positive")]


def test_csv_upload_with_quoted_commas_newlines_and_quotes():
    data = 'input,output\n"hello, world",greeting\n"two\nlines",multi\n"she said ""hi""",quote\n'
    assert upload(data, "train.csv") == [
        Example("hello, world", "greeting"),
        Example("two\nlines", "multi"),
        Example('she said "hi"', "quote"),
    ]


def test_csv_columns_may_come_in_either_order_with_crlf_line_ends():
    data = "output,input\r\npositive,good\r\nnegative,bad\r\n"
    assert upload(data, "train.csv") == [Example("good", "positive"), Example("bad", "negative")]


def test_utf8_byte_order_mark_is_allowed_in_csv_and_jsonl():
    assert upload(b"\xef\xbb\xbfinput,output\nhi,there\n", "excel.csv") == [Example("hi", "there")]
    assert upload(b'\xef\xbb\xbf{"input": "hi", "output": "there"}\n') == [Example("hi", "there")]


@pytest.mark.parametrize("filename", ["a.jsonl", "a.NDJSON", "a.json-lines"])
def test_jsonl_extensions_are_recognised(filename):
    assert upload(jsonl({"input": "a", "output": "b"}), filename) == [Example("a", "b")]


def test_content_type_decides_when_the_name_does_not():
    data = "input,output\na,b\n"
    assert upload(data, None, "text/csv; charset=utf-8") == [Example("a", "b")]
    assert upload(jsonl({"input": "a", "output": "b"}), "blob", "application/x-ndjson") == [Example("a", "b")]


def test_format_is_sniffed_when_neither_name_nor_type_tells():
    assert upload(jsonl({"input": "a", "output": "b"}), None, None) == [Example("a", "b")]
    assert upload("\n input,output\na,b\n", "data.txt", "text/plain") == [Example("a", "b")]


def test_json_body_examples_are_accepted():
    items = [{"input": "a", "output": "x"}, {"input": "b", "output": "y"}]
    assert parse_examples(items, max_examples=LIMIT) == [Example("a", "x"), Example("b", "y")]


def test_labels_are_distinct_outputs_in_first_seen_order():
    examples = [Example("1", "neg"), Example("2", "pos"), Example("3", "neg"), Example("4", "neutral")]
    assert dataset_labels(examples) == ["neg", "pos", "neutral"]


def test_line_error_renders_where_it_is():
    assert LineError(17, "x").where == "line 17"
    assert LineError(3, "x", kind="example").where == "example 3"


# --- malformed JSONL -----------------------------------------------------------------------------------


def test_jsonl_missing_field_names_the_line_and_field():
    data = jsonl({"input": "a", "output": "b"}, {"input": "a", "output": "b"}) + b'\n\n{"input": "c"}\n'
    error = invalid(data)
    assert (
        error.message == 'dataset has 1 invalid line; first: line 4: missing field "output" (other examples have one)'
    )
    assert error.details == [{"line": 4, "message": 'missing field "output" (other examples have one)'}]


def test_jsonl_every_bad_line_is_reported_at_once():
    lines = [
        '{"input": "ok", "output": "fine"}',
        "not json",
        '["input", "output"]',
        '{"input": "a"}',
        '{"input": "a", "output": "b", "label": "c"}',
        '{"input": 3, "output": null}',
        '{"input": "", "output": "   "}',
        '{"input": "a", "output": "b", "output": "c"}',
        "{}",
    ]
    error = invalid("\n".join(lines))
    assert error.message.startswith("dataset has 8 invalid lines; first: line 2: not valid JSON:")
    assert [detail["line"] for detail in error.details] == [2, 3, 4, 5, 6, 7, 8, 9]
    messages = [detail["message"] for detail in error.details]
    assert messages[0] == "not valid JSON: Expecting value (column 1)"
    assert messages[1] == 'expected an object with "input" and "output", got an array'
    assert messages[2] == 'missing field "output" (other examples have one)'
    assert messages[3] == 'unexpected field "label"; only "input" and "output" are allowed'
    assert messages[4] == 'field "input" must be a string, got a number; field "output" must be a string, got null'
    assert messages[5] == 'field "input" is empty; field "output" is only whitespace'
    assert messages[6] == 'field "output" appears twice'
    assert messages[7] == 'missing field "input"'


def test_jsonl_values_that_no_database_can_store_are_refused():
    error = invalid('{"input": "a\\u0000b", "output": "x"}\n{"input": "\\ud800", "output": "x"}\n')
    assert error.details == [
        {"line": 1, "message": 'field "input" contains a NUL character'},
        {"line": 2, "message": 'field "input" contains an unpaired surrogate escape'},
    ]


def test_deeply_nested_json_is_an_error_not_a_crash():
    error = invalid("[" * 100_000)
    assert error.details == [{"line": 1, "message": "not valid JSON: nested too deeply"}]


def test_error_list_is_capped_and_the_message_says_how_many():
    error = invalid("\n".join(["oops"] * (MAX_REPORTED_ERRORS + 20)))
    assert len(error.details) == MAX_REPORTED_ERRORS
    assert error.message.startswith(
        f"dataset has {MAX_REPORTED_ERRORS + 20} invalid lines (details list the first {MAX_REPORTED_ERRORS}); "
        "first: line 1: not valid JSON"
    )
    assert len(error.errors) == MAX_REPORTED_ERRORS + 20


# --- malformed CSV -------------------------------------------------------------------------------------


def test_csv_ragged_and_empty_rows_name_their_lines():
    data = 'input,output\na,b\nc,d,e\nf\n,g\n\n"multi\nline",h,i\n'
    error = invalid(data, "train.csv")
    assert error.details == [
        {"line": 3, "message": "expected 2 columns, found 3; quote values that contain commas"},
        {"line": 4, "message": "expected 2 columns, found 1"},
        {"line": 5, "message": 'column "input" is empty'},
        {"line": 7, "message": "expected 2 columns, found 3; quote values that contain commas"},
    ]


def test_csv_header_must_be_exactly_input_and_output():
    error = invalid("text,label\na,b\n", "train.csv")
    assert error.details == [
        {
            "line": 1,
            "message": 'header is missing columns "input" and "output"; '
            'header has unexpected columns "text" and "label" (found "text,label", expected "input,output", '
            'or "input" for inputs only)',
        }
    ]
    extra = invalid("input,output,id\na,b,1\n", "train.csv")
    assert extra.message.startswith('dataset has 1 invalid line; first: line 1: header has unexpected column "id"')
    repeated = invalid("input,input,output\n", "train.csv")
    assert repeated.details[0]["message"].startswith('header repeats column "input"')


def test_csv_unclosed_quote_points_at_where_it_opened():
    error = invalid('input,output\na,b\n"never closed,c\nd,e\n', "train.csv")
    assert error.details == [{"line": 3, "message": "a quoted value starting on this line is never closed"}]


def test_csv_stray_quote_after_a_quoted_value_is_an_error():
    error = invalid('input,output\n"a"b,c\nd,e\n', "train.csv")
    assert error.details[0]["line"] == 2
    assert error.details[0]["message"].startswith("bad CSV quoting:")


# --- encoding, emptiness, size, format -----------------------------------------------------------------


def test_non_utf8_bytes_are_reported_with_their_line():
    error = invalid(b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n')
    assert error.message == "dataset is not UTF-8 text: line 2 has the byte 0xe9; save it as UTF-8"
    assert error.details == [{"line": 2, "message": "not valid UTF-8 (byte 0xe9)"}]


def test_utf16_file_is_refused_with_a_hint():
    error = invalid("input,output\na,b\n".encode("utf-16"), "train.csv")
    assert "UTF-16" in error.message and "UTF-8" in error.message


@pytest.mark.parametrize(
    ("data", "filename"),
    [(b"", "a.jsonl"), (b"\n \r\n", "a.jsonl"), (b"input,output\n", "a.csv"), (b"input,output\n\n", None)],
)
def test_dataset_without_examples_is_empty(data, filename):
    error = refused(data, filename)
    assert error.code == "dataset_empty"
    assert error.message == "dataset has no examples"


def test_json_body_without_examples_is_empty():
    with pytest.raises(AppError) as caught:
        parse_examples([], max_examples=LIMIT)
    assert caught.value.code == "dataset_empty"


def test_more_examples_than_the_limit_is_too_large():
    data = jsonl(*({"input": str(i), "output": "x"} for i in range(4)))
    with pytest.raises(AppError) as caught:
        parse_upload(data, "a.jsonl", None, max_examples=3)
    assert caught.value.code == "dataset_too_large"
    assert "more than 3 examples" in caught.value.message
    assert parse_upload(data, "a.jsonl", None, max_examples=4)[-1] == Example("3", "x")
    csv_data = b"input,output\na,b\nc,d\n"
    with pytest.raises(AppError, match="more than 1 examples") as caught:
        parse_upload(csv_data, "a.csv", None, max_examples=1)
    assert caught.value.code == "dataset_too_large"
    with pytest.raises(AppError) as caught:
        parse_examples([{"input": "a", "output": "b"}] * 2, max_examples=1)
    assert caught.value.code == "dataset_too_large"


def test_unknown_format_says_which_formats_work():
    error = refused("just some prose\nmore prose\n", "notes.txt", "text/plain")
    assert error.code == "unsupported_format"
    assert error.message.startswith('cannot read "notes.txt": it looks like neither JSONL nor CSV')
    assert "JSONL" in error.message and "CSV" in error.message


def test_json_array_file_is_pointed_at_the_json_body_form():
    error = refused('[{"input": "a", "output": "b"}]', "data.json", "application/json")
    assert error.code == "unsupported_format"
    assert "JSON body" in error.message


def test_binary_file_of_unknown_kind_is_unsupported():
    error = refused(b"PK\x03\x04\x14\x00\x06\x00\xff\xfe", "book.xlsx", "application/octet-stream")
    assert error.code == "unsupported_format"
    assert "not UTF-8 text" in error.message


# --- JSON body -----------------------------------------------------------------------------------------


def test_json_body_errors_name_examples_counted_from_one():
    items = [{"input": "a", "output": "b"}, {"input": "a"}, "text", {"input": "a", "output": 1, "x": 2}]
    with pytest.raises(DatasetInvalid) as caught:
        parse_examples(items, max_examples=LIMIT)
    error = caught.value
    assert (
        error.message
        == 'dataset has 3 invalid examples; first: example 2: missing field "output" (other examples have one)'
    )
    assert error.details == [
        {"example": 2, "message": 'missing field "output" (other examples have one)'},
        {"example": 3, "message": 'expected an object with "input" and "output", got a string'},
        {
            "example": 4,
            "message": 'unexpected field "x"; only "input" and "output" are allowed; '
            'field "output" must be a string, got a number',
        },
    ]
