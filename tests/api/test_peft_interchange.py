"""PEFT adapters in and out: an exported version loads in PEFT and scores as the service serves it; a PEFT-made
adapter imports and is served as PEFT serves it; export -> import is bit-exact; bad adapters get 4xx."""

from __future__ import annotations

import copy
import io
import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec, encode_example, label_token_ids
from app.engine.formats.artifact import Artifact
from app.engine.formats.peft_adapter import peft_model_of, to_peft
from tests.api.helpers import create_task, train_task
from tests.api.test_keys import ADMIN_KEY, as_key, new_key

LABELS = ("positive", "negative")
SPEC = TaskSpec("classification", "Review: {input}\nSentiment:", LABELS)
INPUTS = ["a good film with a fine cast", "bad", "the plot was awful and long"]


def _peft_scores(model: Any, frozen: FrozenModel, text: str) -> list[float]:
    """PEFT's own forward: softmax over each label's total log-prob (how the service scores labels)."""
    encoded = encode_example(frozen, SPEC, text, None).input_ids
    totals = []
    for label_ids in label_token_ids(frozen, SPEC):
        ids = torch.tensor([encoded + label_ids])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
        virtual = logits.shape[0] - ids.shape[1]  # PEFT's prompt tuning returns logits for the virtual tokens too
        log_probs = torch.log_softmax(logits[virtual:], dim=-1)
        start = len(encoded)
        totals.append(sum(float(log_probs[start - 1 + i, token]) for i, token in enumerate(label_ids)))
    return torch.softmax(torch.tensor(totals), dim=-1).tolist()


def _served(client: TestClient, task: str) -> list[list[float]]:
    response = client.post("/v1/infer", json={"task": task, "inputs": INPUTS})
    assert response.status_code == 200, response.text
    return [[row["scores"][label] for label in LABELS] for row in response.json()["outputs"]]


def _load_peft(frozen: FrozenModel, folder: Path) -> Any:
    from peft import PeftModel

    with warnings.catch_warnings():  # PEFT calls a transformers method deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        return PeftModel.from_pretrained(copy.deepcopy(frozen.model), str(folder)).eval()


def _unzip(data: bytes, folder: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        archive.extractall(folder)
    (root,) = {Path(name).parent for name in names}
    return folder / root


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_an_exported_version_loads_in_peft_and_scores_as_served(
    client: TestClient, frozen: FrozenModel, tmp_path: Path, method: str
) -> None:
    _, job = train_task(client, method=method, steps=4)
    prompt_id = job["result_prompt_id"]
    response = client.get(f"/v1/prompts/{prompt_id}/export", params={"format": "peft"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    folder = _unzip(response.content, tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == {"prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING"}[method]
    model = _load_peft(frozen, folder)
    served = _served(client, "sentiment")
    for text, scores in zip(INPUTS, served, strict=True):
        assert _peft_scores(model, frozen, text) == pytest.approx(scores, abs=1e-4)
    # The benchmarks' PEFT baselines load adapters through the app's own code: the same model PEFT loads.
    copied = FrozenModel(copy.deepcopy(frozen.model), frozen.tokenizer, frozen.identity)
    adapter = to_peft(
        Artifact.from_bytes(client.get(f"/v1/prompts/{prompt_id}/export?format=safetensors").content), copied, "m"
    )
    wrapped = peft_model_of(copied, {"a": adapter})
    for text, scores in zip(INPUTS, served, strict=True):
        assert _peft_scores(wrapped, frozen, text) == pytest.approx(scores, abs=1e-4)


def test_export_then_import_is_bit_exact_and_serves_the_same(client: TestClient) -> None:
    _, job = train_task(client, method="prefix", steps=4)
    exported = client.get(f"/v1/prompts/{job['result_prompt_id']}/export").content
    before = _served(client, "sentiment")
    create_task(client, "copy")
    response = client.post("/v1/prompts/import", data={"task": "copy"}, files={"file": ("a.zip", exported)})
    assert response.status_code == 201, response.text
    imported = response.json()
    assert imported["method"] == "prefix" and imported["active"] and imported["lineage"]["job_type"] == "import"
    original = client.get(f"/v1/prompts/{job['result_prompt_id']}/export", params={"format": "safetensors"})
    copied = client.get(f"/v1/prompts/{imported['id']}/export", params={"format": "safetensors"})
    a, b = Artifact.from_bytes(original.content), Artifact.from_bytes(copied.content)
    assert a.method == b.method and set(a.tensors) == set(b.tensors)
    for name in a.tensors:
        assert torch.equal(a.tensors[name], b.tensors[name])  # bit for bit
    assert _served(client, "copy") == before


def test_a_peft_trained_adapter_is_served_as_peft_serves_it(
    client: TestClient, frozen: FrozenModel, tmp_path: Path
) -> None:
    from peft import PromptEncoderConfig, TaskType, get_peft_model

    create_task(client, "sentiment")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # P-tuning: PEFT's own prompt encoder (an MLP), a few SGD steps so the prompt is not its init
        model = get_peft_model(
            copy.deepcopy(frozen.model), PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3)
        )
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.tensor([encode_example(frozen, SPEC, "good", "positive").input_ids])
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    model.save_pretrained(str(tmp_path / "adapter"))
    files = {
        name: (name, (tmp_path / "adapter" / name).read_bytes())
        for name in ("adapter_config.json", "adapter_model.safetensors")
    }
    response = client.post("/v1/prompts/import", data={"task": "sentiment"}, files=files)
    assert response.status_code == 201, response.text
    assert response.json()["method"] == "prompt"
    loaded = _load_peft(frozen, tmp_path / "adapter")
    for text, scores in zip(INPUTS, _served(client, "sentiment"), strict=True):
        assert _peft_scores(loaded, frozen, text) == pytest.approx(scores, abs=1e-4)


def _adapter_zip(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("adapter_config.json", json.dumps(config))
        archive.writestr("adapter_model.safetensors", save(tensors))
    return buffer.getvalue()


def test_adapters_that_cannot_be_served_here_are_refused_with_the_reason(
    client: TestClient, frozen: FrozenModel
) -> None:
    _, job = train_task(client, steps=2)
    with zipfile.ZipFile(io.BytesIO(client.get(f"/v1/prompts/{job['result_prompt_id']}/export").content)) as z:
        config = json.loads(z.read(next(n for n in z.namelist() if n.endswith("adapter_config.json"))))
        tensors = load_safetensors(z.read(next(n for n in z.namelist() if n.endswith(".safetensors"))))

    def post(data: bytes, **form: str) -> Any:
        return client.post("/v1/prompts/import", data={"task": "sentiment", **form}, files={"file": ("a.zip", data)})

    wide = {"prompt_embeddings": torch.zeros(4, frozen.hidden_size + 8)}
    cases = [
        (post(_adapter_zip(config, wide)), 409, "base_model_mismatch"),
        (post(_adapter_zip({**config, "base_model_name_or_path": "org/other-model"}, tensors)), 409, None),
        (post(_adapter_zip(config, tensors), fingerprint="0" * 64), 409, "base_model_mismatch"),
        (post(_adapter_zip({"peft_type": "LORA", "r": 8, "task_type": "CAUSAL_LM"}, tensors)), 422, None),
        (post(b"not a zip"), 422, "adapter_invalid"),
        (post(_adapter_zip(config, {"other": torch.zeros(2, 2)})), 422, "adapter_unsupported"),
        (client.post("/v1/prompts/import", json={"task": "sentiment"}), 415, None),
        (post(_adapter_zip(config, tensors), task="nope"), 404, None),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"]
        if code:
            assert error["code"] == code
    assert "LORA" in cases[3][0].json()["error"]["message"]
    # a method PEFT has no equivalent of cannot be exported as PEFT, but as promptbank's own file it can
    _, other = train_task(client, "mapped", method="input_mapping", steps=2)
    refused = client.get(f"/v1/prompts/{other['result_prompt_id']}/export", params={"format": "peft"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "export_unsupported"
    own = client.get(f"/v1/prompts/{other['result_prompt_id']}/export", params={"format": "safetensors"})
    assert own.status_code == 200 and Artifact.from_bytes(own.content).method == "input_mapping"


def test_an_import_beyond_the_tenants_storage_quota_answers_429_and_stores_nothing(
    client_with: Callable[..., TestClient], frozen: FrozenModel
) -> None:
    client = client_with(admin_key=ADMIN_KEY, run_worker=False)
    admin = as_key(client, ADMIN_KEY)
    adapter = to_peft(Artifact("prompt", {"prompt": torch.randn(8, frozen.hidden_size)}), frozen, frozen.identity.name)
    archive = _adapter_zip(adapter.config, adapter.tensors)
    for stored_bytes, status in ((1_000, 429), (100_000, 201)):  # the prompt alone is 2 KB of float32
        user = as_key(
            client, new_key(admin, f"t{stored_bytes}", ["read", "train"], limits={"stored_bytes": stored_bytes})
        )
        create_task(user, "sentiment")
        response = user.post("/v1/prompts/import", data={"task": "sentiment"}, files={"file": ("a.zip", archive)})
        assert response.status_code == status, response.text
        if status == 429:
            assert response.json()["error"]["code"] == "storage_quota_exceeded"
            assert user.get("/v1/prompts").json() == []  # nothing stored
