"""Prompts stored as bytes."""

from __future__ import annotations

import pytest
import torch

from app.engine.serialization import prompt_from_bytes, prompt_to_bytes


def test_prompt_bytes_round_trip() -> None:
    prompt = torch.randn(7, 64, dtype=torch.bfloat16)
    data = prompt_to_bytes(prompt, {"method": "prompt_tuning", "model": "abc"})
    restored, metadata = prompt_from_bytes(data)
    assert restored.dtype == torch.float32
    assert torch.equal(restored, prompt.float())
    assert metadata == {"method": "prompt_tuning", "model": "abc"}


def test_corrupt_bytes_raise_a_clear_error() -> None:
    data = prompt_to_bytes(torch.zeros(2, 4), {})
    for bad in (b"", b"not safetensors at all", data[: len(data) // 2]):
        with pytest.raises(ValueError, match="corrupt"):
            prompt_from_bytes(bad)


def test_bytes_without_a_prompt_tensor_are_refused() -> None:
    from safetensors.torch import save

    with pytest.raises(ValueError, match='no tensor named "prompt"'):
        prompt_from_bytes(save({"other": torch.zeros(2, 2)}))


def test_metadata_must_be_strings() -> None:
    with pytest.raises(ValueError, match="strings"):
        prompt_to_bytes(torch.zeros(2, 4), {"steps": 3})  # type: ignore[dict-item]
