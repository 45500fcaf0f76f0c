"""The frozen causal LM shared by every task: loaded once, never trained, never mutated."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

# Config keys that change with the library version, the load path or the runtime dtype, not with the model.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "name_or_path", "dtype", "torch_dtype", "use_cache"}
)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class ModelIdentity:
    """Which base model a prompt belongs to: a display name and a hash of config plus weights."""

    name: str
    fingerprint: str


def freeze(model: torch.nn.Module) -> None:
    """Put a model in eval mode and stop gradients to every parameter (the one place that freezes)."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def resolve_device(device: str) -> torch.device:
    """Map a device setting ("auto", "cpu", "cuda", "cuda:1"...) to a torch.device that exists here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f'device "{device}" was requested but CUDA is not available; use "cpu" or "auto".')
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Map a dtype setting to a torch dtype: "auto" is float32 on CPU, bfloat16 (else float16) on CUDA."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in _DTYPES:
        raise ValueError(f'unknown dtype "{dtype}"; use one of: auto, {", ".join(_DTYPES)}.')
    return _DTYPES[dtype]


def model_fingerprint(model: PreTrainedModel) -> str:
    """Hex sha256 over the config (sorted JSON, volatile keys removed) and every state_dict tensor's bytes."""
    config = {
        key: value
        for key, value in model.config.to_dict().items()
        if key not in _VOLATILE_CONFIG_KEYS and not key.startswith("_")
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(memoryview(raw.numpy()))
    return digest.hexdigest()


def lead_tokens(tokenizer: Any) -> tuple[int, ...]:
    """The tokens the tokenizer puts before every text by default (Gemma's <bos>; none for SmolLM2 or GPT-2)."""
    bare = list(tokenizer.encode("a", add_special_tokens=False))
    full = list(tokenizer.encode("a", add_special_tokens=True))
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return tuple(full[:start])
    return ()


class FrozenModel:
    """A frozen causal LM plus its tokenizer; holds no per-request state (prompts travel as arguments)."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any, identity: ModelIdentity) -> None:
        freeze(model)
        self.model = model
        self.tokenizer = tokenizer
        self.identity = identity
        first = next(model.parameters())
        self.device: torch.device = first.device
        self.dtype: torch.dtype = first.dtype
        self.hidden_size: int = int(self.embedding_matrix().shape[1])
        config = model.config
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if positions is None:
            raise ValueError("the model config has neither max_position_embeddings nor n_positions.")
        self.max_positions: int = int(positions)
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
        if eos is None:
            raise ValueError("neither the tokenizer nor the model config defines an end-of-sequence token.")
        self.eos_token_id: int = int(eos)
        self.lead_ids: tuple[int, ...] = lead_tokens(tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without special tokens (we add eos ourselves where a target needs it)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of token ids."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding table [vocab, hidden] (read-only by convention: the model is frozen).

        The stored weights: a model whose embedding layer scales them (Gemma, by sqrt(hidden)) feeds its body
        `embed(ids)`, not these rows.
        """
        weight = self.model.get_input_embeddings().weight
        if not isinstance(weight, torch.Tensor):
            raise TypeError("the model's input embeddings have no weight tensor.")
        return weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids as the body receives them (any embedding scale applied):
        [...] long -> [..., hidden] in the model dtype."""
        return self.model.get_input_embeddings()(ids.to(self.device))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head over hidden states [..., hidden] -> [..., vocab]; apply it only where needed."""
        logits = self.model.get_output_embeddings()(hidden)
        # Gemma-2 style models squash logits inside their CausalLM forward, which we bypass.
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits


def load_frozen_model(
    path: str | Path, *, device: str = "auto", dtype: str = "auto", name: str | None = None
) -> FrozenModel:
    """Load a local Hugging Face causal-LM folder (no network), fingerprint it, freeze it, move it."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json).")
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # Fingerprint the checkpoint as stored (its own dtype, on CPU) so one model keeps one identity
    # whether it later runs in float32 on a CPU or in bfloat16 on a GPU.
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype="auto")
    identity = ModelIdentity(name=name or folder.name, fingerprint=model_fingerprint(model))
    # transformers wraps PreTrainedModel.to in a decorator whose signature mypy cannot see.
    model = model.to(device=target_device, dtype=target_dtype)  # type: ignore[call-arg]
    return FrozenModel(model, tokenizer, identity)
