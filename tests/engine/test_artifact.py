"""Stored prompt versions as bytes: the versioned format, the old single-tensor format, and corrupt blobs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save

from app.engine.formats.artifact import FORMAT_VERSION, Artifact, read_metadata


def test_round_trip_keeps_method_tensors_config_and_names_the_shapes_in_the_header() -> None:
    tensors = {"prompt": torch.randn(3, 8), "states": torch.randn(2, 3, 8), "bias": torch.randn(4).double()}
    data = Artifact("deep_overwrite", tensors, {"layers": [1, 2]}).to_bytes({"base_model": "abc"})
    restored = Artifact.from_bytes(data)
    assert restored.method == "deep_overwrite" and restored.config == {"layers": [1, 2]}
    assert all(torch.equal(restored.tensors[name], tensors[name].float()) for name in tensors)
    header = read_metadata(data)
    assert header["format_version"] == str(FORMAT_VERSION) and header["base_model"] == "abc"
    assert json.loads(header["shapes"]) == {"bias": [4], "prompt": [3, 8], "states": [2, 3, 8]}
    assert restored.tensors["bias"].dtype == torch.float32  # float tensors are stored as float32


def test_prompts_stored_before_methods_existed_read_as_plain_prompts() -> None:
    old = torch.randn(5, 8)
    data = bytes(save({"prompt": old}, metadata={"method": "prompt_tuning", "base_model": "abc"}))
    restored = Artifact.from_bytes(data)
    assert restored.method == "prompt" and torch.equal(restored.tensors["prompt"], old)


def test_unreadable_blobs_are_refused_with_a_reason() -> None:
    good = Artifact("prompt", {"prompt": torch.zeros(2, 4)}).to_bytes()
    for bad in (b"", b"garbage", good[:20]):
        with pytest.raises(ValueError, match="corrupt"):
            Artifact.from_bytes(bad)
    with pytest.raises(ValueError, match='old format holds one 2-D tensor "prompt"'):
        Artifact.from_bytes(bytes(save({"other": torch.zeros(2, 2)})))
    future = bytes(save({"x": torch.zeros(1)}, metadata={"format": "promptbank.prompt", "format_version": "9"}))
    with pytest.raises(ValueError, match="upgrade promptbank"):
        Artifact.from_bytes(future)
    with pytest.raises(ValueError, match="new names to strings"):
        Artifact("prompt", {"prompt": torch.zeros(2, 4)}).to_bytes({"method": "x"})
    with pytest.raises(ValueError, match='holds no tensor "keys"'):
        Artifact("prefix", {"prompt": torch.zeros(2, 4)}).tensor("keys", 4)
