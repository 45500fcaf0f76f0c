"""The frozen model: identity, freezing, tokenization, device and dtype settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.engine.core.model import FrozenModel, load_frozen_model, resolve_device, resolve_dtype


def test_fingerprint_is_stable_across_loads(tiny_model_dir: Path, frozen: FrozenModel) -> None:
    again = load_frozen_model(tiny_model_dir, device="cpu")
    assert again.identity == frozen.identity
    assert len(frozen.identity.fingerprint) == 64
    assert frozen.identity.name == tiny_model_dir.name


def test_fingerprint_changes_when_one_weight_changes(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "edited"))
    weights = load_file(copy / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-3
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    edited = load_frozen_model(copy, device="cpu", name="edited")
    assert edited.identity.name == "edited"
    assert edited.identity.fingerprint != load_frozen_model(tiny_model_dir, device="cpu").identity.fingerprint


def test_runtime_dtype_keeps_the_checkpoint_identity(tiny_model_dir: Path, frozen: FrozenModel) -> None:
    half = load_frozen_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    assert half.identity == frozen.identity


def test_loaded_model_is_frozen_and_described(frozen: FrozenModel) -> None:
    assert not frozen.model.training
    assert all(not parameter.requires_grad for parameter in frozen.model.parameters())
    assert frozen.hidden_size == 64
    assert frozen.max_positions == 256
    assert frozen.device == torch.device("cpu")
    assert frozen.dtype == torch.float32
    assert frozen.decode([frozen.eos_token_id], skip_special_tokens=False) == "<|endoftext|>"


def test_text_round_trips_through_the_tokenizer(frozen: FrozenModel) -> None:
    text = "Input: the {movie} was good!\nLabel: positive"
    ids = frozen.encode(text)
    assert frozen.eos_token_id not in ids
    assert frozen.decode(ids) == text
    assert frozen.embed(torch.tensor(ids)).shape == (len(ids), 64)


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_frozen_model(tmp_path)


def test_device_and_dtype_settings_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
