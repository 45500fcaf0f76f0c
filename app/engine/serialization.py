"""A trained prompt as bytes: one safetensors blob holding the tensor "prompt" and string metadata."""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load, save

PROMPT_KEY = "prompt"


def prompt_to_bytes(tensor: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """Serialize a prompt [num_virtual_tokens, hidden] as float32 safetensors with string metadata."""
    if tensor.dim() != 2:
        raise ValueError(f"a prompt is [num_virtual_tokens, hidden], got shape {tuple(tensor.shape)}.")
    bad = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise ValueError(f"prompt metadata must map strings to strings; bad entries: {bad}.")
    # float32 whatever the training dtype, so a prompt trained in bfloat16 on a GPU loads anywhere.
    stored = tensor.detach().to("cpu", torch.float32).contiguous()
    return bytes(save({PROMPT_KEY: stored}, metadata=metadata))


def _read_metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of a safetensors header (safetensors.torch.load returns tensors only)."""
    # Layout: 8-byte little-endian header length, then that many bytes of JSON.
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("__metadata__ is not a mapping")
    return {str(key): str(value) for key, value in metadata.items()}


def prompt_from_bytes(data: bytes) -> tuple[torch.Tensor, dict[str, str]]:
    """Read back (prompt float32 [n, hidden], metadata); ValueError if the bytes are not a stored prompt."""
    try:
        tensors = load(bytes(data))
        metadata = _read_metadata(bytes(data))
    except Exception as error:  # safetensors raises its own error types, struct and json theirs
        raise ValueError(f"the stored prompt is corrupt or not a safetensors blob: {error}") from error
    prompt = tensors.get(PROMPT_KEY)
    if prompt is None:
        raise ValueError(f'the stored prompt holds no tensor named "{PROMPT_KEY}" (found {sorted(tensors)}).')
    if prompt.dim() != 2 or prompt.dtype != torch.float32:
        raise ValueError(
            f"the stored prompt has shape {tuple(prompt.shape)} and dtype {prompt.dtype}; "
            "expected a 2-D float32 tensor."
        )
    return prompt, metadata
