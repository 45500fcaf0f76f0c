"""A prompt exported from the service, loaded with PEFT's own `PeftModel.from_pretrained`, generates greedily the same
tokens as the service on the bundled SmolLM2 (slow).

This is what the benchmarks' PEFT generation baseline rests on: PEFT releases before 0.22 read the decode cache under
a name transformers 5.24 stopped passing, so their prompt-tuning `generate` prepended the virtual tokens again at every
step and wrote other tokens than the same prompt served here.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from sqlalchemy import Engine

from app.engine.core.model import FrozenModel
from app.engine.core.prompt_cache import kv_shape
from app.engine.core.text import TaskSpec, encode_example, output_text, render
from app.engine.formats.artifact import Artifact
from app.engine.formats.peft_adapter import to_peft
from app.engine.serving.runtime import ModelRuntime
from app.main import create_app, serving_options
from tests.api.helpers import create_task
from tests.conftest import LOCAL_URL, make_settings

pytestmark = pytest.mark.real_model

SPEC = TaskSpec("generation", "Input: {input}\nOutput:")
INPUTS = [
    "A charming but slight comedy about two brothers.",
    "The plot drags, yet the lead performance holds it together.",
    "An hour and a half of noise.",
]
NEW_TOKENS = 12


@pytest.fixture
def real_client(database_url: str, tmp_path: Path, db_engine: Engine, smollm: FrozenModel) -> Iterator[TestClient]:
    settings = make_settings(database_url, tmp_path, run_worker=False)
    app = create_app(settings, runtime=ModelRuntime.from_model(smollm, serving_options(settings)))
    with TestClient(app, base_url=LOCAL_URL) as client:
        yield client


def _seeded_artifact(frozen: FrozenModel, method: str) -> Artifact:
    """A seeded random prompt at the scale of the model's own embeddings (8 virtual tokens)."""
    generator = torch.Generator().manual_seed(11)
    if method == "prompt":
        scale = float(frozen.model.get_input_embeddings().weight.std())
        return Artifact("prompt", {"prompt": torch.randn(8, frozen.hidden_size, generator=generator) * scale})
    layers, kv_heads, head_dim = kv_shape(frozen)
    shape = (layers, kv_heads, 8, head_dim)
    return Artifact(
        "prefix", {"keys": torch.randn(*shape, generator=generator), "values": torch.randn(*shape, generator=generator)}
    )


def _import(client: TestClient, frozen: FrozenModel, artifact: Artifact) -> int:
    adapter = to_peft(artifact, frozen, frozen.identity.name)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("adapter_config.json", json.dumps(adapter.config))
        archive.writestr("adapter_model.safetensors", save(adapter.tensors))
    response = client.post(
        "/v1/prompts/import", data={"task": "echo"}, files={"file": ("adapter.zip", buffer.getvalue())}
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _export_to(client: TestClient, prompt_id: int, folder: Path) -> Path:
    response = client.get(f"/v1/prompts/{prompt_id}/export", params={"format": "peft"})
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        archive.extractall(folder)
    (root,) = {Path(name).parent for name in names}
    return folder / root


@torch.no_grad()
def _peft_generate(model: Any, frozen: FrozenModel, text: str) -> tuple[list[int], str]:
    """PEFT's greedy `generate` of one input, as a user runs it: the new tokens up to end of sequence, and the text
    the service would answer for them."""
    ids = torch.tensor([encode_example(frozen, SPEC, text, None).input_ids])
    eos = frozen.eos_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=eos,
            eos_token_id=eos,
        )
    tokens = out[0, ids.shape[1] :].tolist()
    tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
    return tokens, output_text(render(SPEC.template, text), frozen.decode(tokens))


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_an_exported_prompt_generates_in_peft_the_tokens_the_service_generates(
    real_client: TestClient, smollm: FrozenModel, tmp_path: Path, method: str
) -> None:
    create_task(real_client, "echo", kind="generation", labels=[], template=SPEC.template)
    prompt_id = _import(real_client, smollm, _seeded_artifact(smollm, method))
    folder = _export_to(real_client, prompt_id, tmp_path)
    from peft import PeftModel

    with warnings.catch_warnings():  # PEFT calls a transformers method deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(copy.deepcopy(smollm.model), str(folder)).eval()
    response = real_client.post("/v1/infer", json={"task": "echo", "inputs": INPUTS, "max_new_tokens": NEW_TOKENS})
    assert response.status_code == 200, response.text
    served = [output["text"] for output in response.json()["outputs"]]
    for text, by_service in zip(INPUTS, served, strict=True):
        tokens, by_peft = _peft_generate(model, smollm, text)
        assert len(tokens) >= 4, f"too few tokens to compare for {text!r}: {tokens}"
        assert by_peft == by_service, f"{text!r}: PEFT {by_peft!r}, service {by_service!r}"
