"""Templates, targets and label tokens."""

from __future__ import annotations

import pytest

from app.engine.core.model import FrozenModel
from app.engine.core.text import (
    TaskSpec,
    encode_example,
    label_token_ids,
    output_text,
    render,
    target_text,
)


def test_render_leaves_other_braces_alone() -> None:
    assert render("Q: {input} {x} {0}\nA:", "a {b} c}") == "Q: a {b} c} {x} {0}\nA:"


def test_target_gets_one_leading_space_unless_the_prompt_ends_in_space() -> None:
    assert target_text("Label:", "positive") == " positive"
    assert target_text("Label: ", "positive") == "positive"
    assert target_text("Label:\n", "positive") == "positive"
    assert output_text("Label:", " positive") == "positive"
    assert output_text("Label: ", " positive") == " positive"


def test_generation_targets_end_with_eos_and_labels_do_not(
    frozen: FrozenModel, sentiment: TaskSpec, answer: TaskSpec
) -> None:
    labelled = encode_example(frozen, sentiment, "the movie was good", "positive")
    assert labelled.input_ids == frozen.encode("Input: the movie was good\nLabel:")
    assert labelled.target_ids == frozen.encode(" positive")
    assert labelled.target_ids == label_token_ids(frozen, sentiment)[0]
    generated = encode_example(frozen, answer, "capital of france?", "paris")
    assert generated.target_ids == [*frozen.encode(" paris"), frozen.eos_token_id]
    assert encode_example(frozen, answer, "capital of france?", None).target_ids == []


def test_task_specs_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        TaskSpec("generation", "no placeholder here")
    with pytest.raises(ValueError, match="at least two labels"):
        TaskSpec("classification", "{input}", ("only",))
    with pytest.raises(ValueError, match="distinct"):
        TaskSpec("classification", "{input}", ("a", "a"))
    spec = TaskSpec("classification", "{input}", ["yes", "no"])  # type: ignore[arg-type]
    assert spec.labels == ("yes", "no")
