"""A stored prompt version as bytes: versioned safetensors whose header names the method, format and shapes.

Format 1: tensors by name (float32, or int64 for indices), and string metadata `format` = "promptbank.prompt",
`format_version` = "1", `method`, `config` (JSON: what the method needs besides tensors to serve), `shapes`
(JSON: name -> shape) plus any extra strings (base model). Prompts stored before format 1 hold one 2-D tensor
"prompt" and no format_version: they read back as method "prompt".
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load, save

FORMAT = "promptbank.prompt"
FORMAT_VERSION = 1
_RESERVED = ("format", "format_version", "method", "config", "shapes")


@dataclass(frozen=True)
class Artifact:
    """What a method stores: its name, named tensors (CPU), and the JSON config it needs to serve them."""

    method: str
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {name: list(tensor.shape) for name, tensor in sorted(self.tensors.items())}

    def tensor(self, name: str, dims: int) -> torch.Tensor:
        """A named tensor of `dims` dimensions; ValueError naming what is missing or misshapen."""
        found = self.tensors.get(name)
        if found is None:
            raise ValueError(
                f'the stored {self.method} prompt holds no tensor "{name}" (found {sorted(self.tensors)}).'
            )
        if found.dim() != dims:
            raise ValueError(
                f'tensor "{name}" of the stored {self.method} prompt has shape {tuple(found.shape)}; '
                f"expected {dims} dimensions."
            )
        return found

    def to_bytes(self, extra: dict[str, str] | None = None) -> bytes:
        """Serialize: float tensors as float32 (a prompt trained in bfloat16 on a GPU loads anywhere)."""
        extra = extra or {}
        clash = [key for key in extra if key in _RESERVED]
        bad = [key for key, value in extra.items() if not isinstance(key, str) or not isinstance(value, str)]
        if clash or bad:
            raise ValueError(f"extra metadata must map new names to strings; bad entries: {clash + bad}.")
        stored = {
            name: (t.detach().to("cpu", torch.float32) if t.is_floating_point() else t.detach().cpu()).contiguous()
            for name, t in self.tensors.items()
        }
        metadata = {
            **extra,
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "method": self.method,
            "config": json.dumps(self.config, sort_keys=True),
            "shapes": json.dumps(self.shapes, sort_keys=True),
        }
        return bytes(save(stored, metadata=metadata))

    @classmethod
    def from_bytes(cls, data: bytes) -> Artifact:
        """Read back any stored prompt (format 1 or the older single-tensor format); ValueError if corrupt."""
        try:
            tensors = load(bytes(data))
            metadata = read_metadata(bytes(data))
        except Exception as error:  # safetensors raises its own error types, struct and json theirs
            raise ValueError(f"the stored prompt is corrupt or not a safetensors blob: {error}") from error
        if "format_version" not in metadata:
            prompt = tensors.get("prompt")
            if prompt is None or prompt.dim() != 2:
                raise ValueError(f'a prompt of the old format holds one 2-D tensor "prompt" (found {sorted(tensors)}).')
            return cls("prompt", {"prompt": prompt.float()})
        if metadata.get("format") != FORMAT or metadata["format_version"] != str(FORMAT_VERSION):
            raise ValueError(
                f"stored prompt format {metadata.get('format')!r} version {metadata['format_version']!r} is not "
                f"{FORMAT!r} version {FORMAT_VERSION}; upgrade promptbank to read it."
            )
        try:
            config = json.loads(metadata.get("config", "{}"))
        except json.JSONDecodeError as error:
            raise ValueError(f"the stored prompt's config is not JSON: {error}") from error
        return cls(metadata.get("method", ""), tensors, config)


def read_metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of a safetensors header (safetensors.torch.load returns tensors only)."""
    # Layout: 8-byte little-endian header length, then that many bytes of JSON.
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("__metadata__ is not a mapping")
    return {str(key): str(value) for key, value in metadata.items()}
