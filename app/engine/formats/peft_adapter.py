"""Hugging Face PEFT adapters in and out: a stored prompt as PEFT's `adapter_config.json` plus
`adapter_model.safetensors`, and a PEFT adapter as a stored prompt.

What maps (the tensors are the same numbers, laid out as PEFT lays them out):
- method "prompt" ([n, hidden]) <-> PROMPT_TUNING, `prompt_embeddings` [n, hidden]. A saved P_TUNING adapter also
  imports as "prompt": PEFT saves its prompt encoder's output, which is a plain prompt.
- method "prefix" (keys and values [layers, kv_heads, n, head_dim]) <-> PREFIX_TUNING, `prompt_embeddings`
  [n, layers * 2 * kv_heads * head_dim]: PEFT views each row as (layer, key|value, head, dim). A prefix adapter
  trained with a projection is saved by PEFT as that projection's output, so it imports the same way.
Other methods have no PEFT equivalent (UnsupportedAdapter says why), and PEFT adapters of other kinds (LoRA and
the like change weights, not prompts) are not served here.

The configuration is built and read by PEFT's own config classes, so a file written here is one PEFT writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.engine.core.model import FrozenModel
from app.engine.core.prompt_cache import kv_shape
from app.engine.formats.artifact import Artifact

WEIGHTS_KEY = "prompt_embeddings"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class UnsupportedAdapter(ValueError):
    """A prompt PEFT cannot express, or a PEFT adapter promptbank does not serve."""


class OtherBaseModel(ValueError):
    """An adapter made for another base model."""


@dataclass(frozen=True)
class PeftAdapter:
    """A PEFT adapter folder's two files, as a config dict and its tensors."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def _model_shape(frozen: FrozenModel) -> tuple[int, int, int, int]:
    layers, kv_heads, head_dim = kv_shape(frozen)
    return layers, kv_heads, head_dim, frozen.hidden_size


def to_peft(artifact: Artifact, frozen: FrozenModel, base_model_name: str) -> PeftAdapter:
    """The PEFT adapter of a stored prompt; UnsupportedAdapter for a method PEFT has no equivalent of."""
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType

    layers, kv_heads, head_dim, hidden = _model_shape(frozen)
    heads = int(getattr(frozen.model.config, "num_attention_heads", None) or frozen.model.config.n_head)
    common: dict[str, Any] = {
        "task_type": TaskType.CAUSAL_LM,
        "base_model_name_or_path": base_model_name,
        "num_layers": layers,
        "inference_mode": True,
    }
    if "head.weight" in artifact.tensors:
        raise UnsupportedAdapter(
            "this prompt reads its label with a learned label head, which PEFT's prompt adapters cannot hold; "
            "export a version trained without label_head."
        )
    if artifact.method == "prompt":
        prompt = artifact.tensor("prompt", 2)
        config = PromptTuningConfig(
            num_virtual_tokens=int(prompt.shape[0]),
            token_dim=hidden,
            num_attention_heads=heads,
            num_transformer_submodules=1,
            **common,
        )
        return PeftAdapter(_config_dict(config), {WEIGHTS_KEY: prompt.detach().cpu().contiguous()})
    if artifact.method == "prefix":
        keys, values = artifact.tensor("keys", 4), artifact.tensor("values", 4)
        if tuple(keys.shape[:2]) != (layers, kv_heads) or keys.shape[3] != head_dim or keys.shape != values.shape:
            raise UnsupportedAdapter(
                f"the prefix's keys/values have shape {tuple(keys.shape)}; PEFT's PrefixTuning for this model needs "
                f"[{layers}, {kv_heads}, n, {head_dim}]."
            )
        n = int(keys.shape[2])
        # [2, layers, kv_heads, n, dim] -> [n, layers, 2, kv_heads, dim] -> [n, layers * 2 * kv_heads * dim]
        stacked = torch.stack([keys, values]).permute(3, 1, 0, 2, 4).reshape(n, layers * 2 * kv_heads * head_dim)
        # PEFT sizes the prefix of a grouped-query model by its key/value heads (token_dim = kv_heads * head_dim).
        prefix_config = PrefixTuningConfig(
            num_virtual_tokens=n,
            token_dim=kv_heads * head_dim,
            num_attention_heads=kv_heads,
            num_transformer_submodules=1,
            prefix_projection=False,
            **common,
        )
        return PeftAdapter(_config_dict(prefix_config), {WEIGHTS_KEY: stacked.detach().cpu().contiguous()})
    raise UnsupportedAdapter(
        f'method "{artifact.method}" has no PEFT equivalent: PEFT exports exist for "prompt" (PromptTuning) and '
        '"prefix" (PrefixTuning).'
    )


def _peft_config(config: dict[str, Any]) -> Any:
    """PEFT's own config object of an adapter_config.json dict (auto_mapping is written by PEFT, not read)."""
    from peft import PeftConfig

    return PeftConfig.from_peft_type(**{key: value for key, value in config.items() if key != "auto_mapping"})


def _config_dict(config: Any) -> dict[str, Any]:
    """The dict PEFT's save_pretrained writes as adapter_config.json."""
    values: dict[str, Any] = config.to_dict()
    return {key: (value.value if hasattr(value, "value") else value) for key, value in values.items()}


def from_peft(adapter: PeftAdapter, frozen: FrozenModel, base_model_name: str) -> Artifact:
    """A stored prompt from a PEFT adapter: UnsupportedAdapter for a kind not served here, OtherBaseModel for an
    adapter of another base model (its shapes or its recorded base model name)."""
    config = adapter.config
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
        raise UnsupportedAdapter(
            f"PEFT adapters of type {peft_type or '(none given)'} are not served here: promptbank serves "
            "PROMPT_TUNING, P_TUNING and PREFIX_TUNING adapters."
        )
    try:  # PEFT's own reading of the file: unknown keys and bad values are its errors
        parsed = _peft_config(config)
    except (TypeError, ValueError) as error:
        raise UnsupportedAdapter(f"adapter_config.json is not a valid PEFT {peft_type} config: {error}") from error
    task_type = str(getattr(parsed, "task_type", "") or "")
    if task_type and task_type.upper() != "CAUSAL_LM":
        raise UnsupportedAdapter(f"the adapter is for task type {task_type}; promptbank serves CAUSAL_LM adapters.")
    if int(getattr(parsed, "num_transformer_submodules", 1) or 1) != 1:
        raise UnsupportedAdapter("the adapter has prompts for an encoder and a decoder; this model is decoder-only.")
    recorded = getattr(parsed, "base_model_name_or_path", None)
    if recorded and recorded.rstrip("/").rsplit("/", 1)[-1] != base_model_name:
        raise OtherBaseModel(
            f'the adapter was made for base model "{recorded}"; this service serves "{base_model_name}".'
        )
    weights = adapter.tensors.get(WEIGHTS_KEY)
    if weights is None or weights.dim() != 2:
        found = {name: tuple(t.shape) for name, t in adapter.tensors.items()}
        raise UnsupportedAdapter(f'adapter_model.safetensors needs a 2-D tensor "{WEIGHTS_KEY}"; found {found}.')
    weights = weights.detach().to(torch.float32).contiguous()
    layers, kv_heads, head_dim, hidden = _model_shape(frozen)
    n = int(weights.shape[0])
    if parsed.num_virtual_tokens and int(parsed.num_virtual_tokens) != n:
        raise UnsupportedAdapter(
            f"adapter_config.json says {parsed.num_virtual_tokens} virtual tokens; the weights hold {n}."
        )
    recorded_layers = getattr(parsed, "num_layers", None)
    if recorded_layers and int(recorded_layers) != layers:
        raise OtherBaseModel(f"the adapter is for a model of {recorded_layers} layers; this one has {layers}.")
    if peft_type in ("PROMPT_TUNING", "P_TUNING"):
        if weights.shape[1] != hidden:
            raise OtherBaseModel(
                f"the adapter's prompt has width {weights.shape[1]}; this model's hidden size is {hidden}."
            )
        return Artifact("prompt", {"prompt": weights})
    width = layers * 2 * kv_heads * head_dim
    if weights.shape[1] != width:
        raise OtherBaseModel(
            f"the prefix adapter's rows have width {weights.shape[1]}; this model needs {width} "
            f"({layers} layers x key and value x {kv_heads} heads x {head_dim})."
        )
    per_row = weights.view(n, layers, 2, kv_heads, head_dim).permute(2, 1, 3, 0, 4)  # [2, layers, heads, n, dim]
    return Artifact("prefix", {"keys": per_row[0].contiguous(), "values": per_row[1].contiguous()})


def peft_model_of(frozen: FrozenModel, adapters: dict[str, PeftAdapter]) -> Any:
    """The frozen model wrapped by PEFT with these adapters loaded under their names (the first one active).

    Wrapping does not change the base model's weights or its own forward: promptbank's engine can keep using
    `frozen.model` beside the PEFT model (benchmarks compare the two on one copy of the weights)."""
    import warnings

    from peft import get_peft_model, set_peft_model_state_dict

    model: Any = None
    for name, adapter in adapters.items():
        config = _peft_config(adapter.config)
        with warnings.catch_warnings():  # PEFT calls a transformers method deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            if model is None:
                model = get_peft_model(frozen.model, config, adapter_name=name)
            else:
                model.add_adapter(name, config)
        set_peft_model_state_dict(model, adapter.tensors, adapter_name=name)
    if model is None:
        raise ValueError("give at least one adapter.")
    model.set_adapter(next(iter(adapters)))
    return model.eval()
