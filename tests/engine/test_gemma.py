"""The second bundled model, Gemma 3 270M (another architecture: sliding-window layers, one key/value head of 256,
a scaled embedding, <bos>): every method trains and serves, mixed batches answer as rows alone, a PEFT export loads
in PEFT, and a service on it refuses a SmolLM2 prompt (slow; skipped unless `bash scripts/install.sh --gemma` ran).
"""

from __future__ import annotations

import copy
import json
import os
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file
from sqlalchemy import Engine

from app.engine.core.mixed import Row, classify_rows, generate_rows, logits_rows
from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.prompts import Prompts
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec, encode_example, label_token_ids
from app.engine.formats.artifact import Artifact
from app.engine.formats.bundled import bundled_model, ensure_bundled_model, is_installed
from app.engine.formats.peft_adapter import CONFIG_FILE, WEIGHTS_FILE, to_peft
from app.engine.methods import REGISTRY, load_segments, parse_config
from app.engine.serving.runtime import ModelRuntime
from app.main import create_app, serving_options
from tests.api.helpers import create_dataset, create_task, wait_for_job
from tests.conftest import LOCAL_URL, make_settings
from tests.engine.reference import greedy_without_cache, plain_logits
from workers.training import TrainJob, TrainResult, train_prompts

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        not is_installed("gemma3-270m"),
        reason=f"Gemma 3 270M is an optional extra, not installed: {bundled_model('gemma3-270m').install_hint}",
    ),
]

SENTIMENT = TaskSpec("classification", "Review: {input}\nSentiment:", ("positive", "negative"))
ANSWER = TaskSpec("generation", "Question: {input}\nAnswer:")
REVIEWS = [
    ("I loved this film, it was wonderful.", "positive"),
    ("What a waste of time, truly awful.", "negative"),
    ("A delightful, moving story with great acting.", "positive"),
    ("Boring plot and terrible dialogue.", "negative"),
]
INPUTS = ["An absolute joy.", "Dreadful and long.", ""]
METHODS = sorted(REGISTRY)
OPTIONS: dict[str, dict[str, Any]] = {
    "prompt": {},
    "prefix": {},
    "deep_overwrite": {"layers": "all"},
    "around": {"num_after_tokens": 2},
    "input_mapping": {"rank": 4},
    "input_dependent": {"generator_hidden": 16},
}


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> FrozenModel:
    configured = os.environ.get("PROMPTBANK_TEST_MODELS_DIR")
    models_dir = Path(configured) if configured else tmp_path_factory.mktemp("models")
    return load_frozen_model(ensure_bundled_model(models_dir, "gemma3-270m"), device="cpu")


@pytest.fixture(scope="module")
def trained(gemma: FrozenModel) -> dict[str, TrainResult]:
    """Every method trained 2 steps on the reviews, in shared passes (as the worker packs jobs)."""
    jobs = [
        TrainJob(
            SENTIMENT,
            REVIEWS,
            REVIEWS[:2],
            parse_config(
                {"method": method, "num_virtual_tokens": 3, "steps": 2, "batch_size": 2, "eval_every": 2}
                | OPTIONS[method]
            ),
        )
        for method in METHODS
    ]
    outcomes = train_prompts(gemma, jobs)
    failed = {m: repr(o) for m, o in zip(METHODS, outcomes, strict=True) if not isinstance(o, TrainResult)}
    assert not failed
    return {m: o for m, o in zip(METHODS, outcomes, strict=True) if isinstance(o, TrainResult)}


def _pool(gemma: FrozenModel, artifacts: dict[int, Artifact]) -> Prompts:
    return Prompts(gemma, lambda prompt_id: load_segments(gemma, artifacts[prompt_id]))


def test_gemma_converts_once_and_reads_as_its_own_architecture(gemma: FrozenModel) -> None:
    assert gemma.identity.name == "gemma-3-270m"
    assert (gemma.hidden_size, gemma.model.config.head_dim, gemma.model.config.num_key_value_heads) == (640, 256, 1)
    assert gemma.model.config.sliding_window == 512
    assert gemma.lead_ids == (gemma.tokenizer.bos_token_id,)  # every row's text opens with <bos>
    assert encode_example(gemma, SENTIMENT, "good", None).input_ids[0] == gemma.tokenizer.bos_token_id
    folder = Path(gemma.model.config._name_or_path)
    assert ensure_bundled_model(folder.parent, "gemma3-270m") == folder  # converted: returned as is


def test_every_method_trains_stores_and_serves(gemma: FrozenModel, trained: dict[str, TrainResult]) -> None:
    for method, result in trained.items():
        stored = Artifact.from_bytes(result.artifact.to_bytes())
        assert stored.method == method
        assert result.metrics["best_val_loss"] is not None, method
        probabilities = classify_rows(gemma, _pool(gemma, {0: stored}), [Row(0, SENTIMENT, t) for t in INPUTS[:2]])
        assert all(abs(sum(p.values()) - 1) < 1e-5 for p in probabilities), method


def test_every_method_in_one_mixed_batch_serves_each_row_as_alone(
    gemma: FrozenModel, trained: dict[str, TrainResult]
) -> None:
    artifacts = {i: trained[method].artifact for i, method in enumerate(METHODS)}
    # One classified and one generated row per method, the inputs (an empty one among them) taken in turn.
    rows = [
        Row(p, spec, INPUTS[(p + k) % len(INPUTS)], max_new_tokens=3)
        for p in artifacts
        for k, spec in enumerate((SENTIMENT, ANSWER))
    ]
    random.Random(0).shuffle(rows)
    pool = _pool(gemma, artifacts)
    logits = logits_rows(gemma, pool, rows, max_batch_tokens=150)  # several sub-batches
    classified = [r for r in rows if r.spec.kind == "classification"]
    probabilities = classify_rows(gemma, pool, classified)
    generating = [r for r in rows if r.spec.kind == "generation"]
    texts = generate_rows(gemma, pool, generating)
    alone = _pool(gemma, artifacts)  # its own pool, each row then in a pass of its own
    for row, got in zip(rows, logits, strict=True):
        expected = logits_rows(gemma, alone, [row])[0]
        assert (got - expected).abs().max().item() < 1e-4, (METHODS[row.prompt_id], row.text)
    for row, got_probabilities in zip(classified, probabilities, strict=True):
        assert got_probabilities == pytest.approx(classify_rows(gemma, alone, [row])[0], abs=1e-4)
    for row, text in zip(generating, texts, strict=True):
        assert [text] == generate_rows(gemma, alone, [row]), METHODS[row.prompt_id]


def test_rows_past_the_sliding_window_read_as_the_uncached_model(gemma: FrozenModel) -> None:
    # 600+ tokens: the last positions of a sliding layer no longer see the first ones; the engine's own masks
    # must say so as the model's own forward does (cached prompt keys, left pads, a batch of lengths).
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randn(n, 640, generator=generator) * 0.5 for n in (2, 5)]
    long = " ".join(["the film was long and the plot went on"] * 70)
    rows = [Row(0, SENTIMENT, long), Row(1, SENTIMENT, "short")]
    pool = Prompts(gemma, lambda prompt_id: Segments(prefix=prompts[prompt_id]))
    assert len(encode_example(gemma, SENTIMENT, long, None).input_ids) > gemma.model.config.sliding_window
    for row, got in zip(rows, logits_rows(gemma, pool, rows), strict=True):
        ids = encode_example(gemma, SENTIMENT, row.text, None).input_ids
        assert (got - plain_logits(gemma, prompts[row.prompt_id], ids)).abs().max().item() < 1e-4
    question = long + " What was long?"
    [generated] = generate_rows(gemma, pool, [Row(0, ANSWER, question, max_new_tokens=2)])
    assert generated == greedy_without_cache(gemma, prompts[0], ANSWER, question, 2)


def _peft_scores(model: Any, gemma: FrozenModel, text: str) -> list[float]:
    """PEFT's own forward: softmax over each label's total log-prob (how the service scores labels)."""
    encoded = encode_example(gemma, SENTIMENT, text, None).input_ids
    totals = []
    for label_ids in label_token_ids(gemma, SENTIMENT):
        ids = torch.tensor([encoded + label_ids])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
        log_probs = torch.log_softmax(logits[logits.shape[0] - ids.shape[1] :], dim=-1)
        totals.append(sum(float(log_probs[len(encoded) - 1 + i, t]) for i, t in enumerate(label_ids)))
    return torch.softmax(torch.tensor(totals), dim=-1).tolist()


def test_a_peft_export_loads_in_peft_and_scores_as_served(
    gemma: FrozenModel, trained: dict[str, TrainResult], tmp_path: Path
) -> None:
    from peft import PeftModel

    for method in ("prompt", "prefix"):
        artifact = trained[method].artifact
        adapter = to_peft(artifact, gemma, gemma.identity.name)
        folder = tmp_path / method  # the two files of the export route's zip
        folder.mkdir()
        (folder / CONFIG_FILE).write_text(json.dumps(adapter.config))
        save_file(adapter.tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
        with warnings.catch_warnings():  # PEFT calls a transformers method deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(copy.deepcopy(gemma.model), str(folder)).eval()
        served = classify_rows(gemma, _pool(gemma, {0: artifact}), [Row(0, SENTIMENT, t) for t in INPUTS])
        for text, scores in zip(INPUTS, served, strict=True):
            expected = [scores[label] for label in SENTIMENT.labels]
            assert _peft_scores(model, gemma, text) == pytest.approx(expected, abs=1e-4), method
        del model


@pytest.fixture
def gemma_client(database_url: str, tmp_path: Path, db_engine: Engine, gemma: FrozenModel) -> Iterator[TestClient]:
    # No worker: the job queued below is the SmolLM2 service's to train.
    settings = make_settings(database_url, tmp_path / "gemma", run_worker=False)
    app = create_app(settings, runtime=ModelRuntime.from_model(gemma, serving_options(settings)))
    with TestClient(app, base_url=LOCAL_URL) as client:
        yield client


def test_a_service_on_gemma_refuses_a_prompt_trained_on_smollm2(
    database_url: str, tmp_path: Path, smollm: FrozenModel, gemma_client: TestClient
) -> None:
    settings = make_settings(database_url, tmp_path / "smollm")
    app = create_app(settings, runtime=ModelRuntime.from_model(smollm, serving_options(settings)))
    with TestClient(app, base_url=LOCAL_URL) as smollm_client:
        create_task(smollm_client, "sentiment", template=SENTIMENT.template)
        dataset = create_dataset(smollm_client, [{"input": text, "output": label} for text, label in REVIEWS])
        body = {"task": "sentiment", "dataset_id": dataset["id"], "hyperparameters": {"steps": 2, "eval_every": 2}}
        job = wait_for_job(smollm_client, smollm_client.post("/v1/jobs", json=body).json()["id"], timeout=300)
        assert job["status"] == "succeeded", job
        assert smollm_client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good"]}).status_code == 200
    response = gemma_client.post("/v1/infer", json={"task": "sentiment", "inputs": ["good"]})
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "base_model_mismatch"
    assert "SmolLM2-135M-Instruct" in error["message"] and "gemma-3-270m" in error["message"]
