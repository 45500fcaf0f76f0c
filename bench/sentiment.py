"""Train a sentiment prompt through the real HTTP API on Rotten Tomatoes snippets; compare with zero-shot.

    python -m bench.sentiment --steps 200

Starts `uvicorn app.main:app` on a free port with a fresh SQLite database (the converted model in data/ is
reused), uploads a balanced training set, trains, classifies a held-out balanced test set over HTTP, and prints
held-out accuracy against the same frozen model prompted zero-shot with English instructions, plus seconds per
training step.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.data import balanced_splits

ZERO_SHOT_TEMPLATES = {
    "zero-shot instruction": "Review: {input}\nIs this movie review positive or negative? Answer:",
    "zero-shot chat instruction": (
        "<|im_start|>user\nIs the following movie review positive or negative? Answer with one word.\n"
        "Review: {input}<|im_end|>\n<|im_start|>assistant\n"
    ),
}
TRAIN_TEMPLATE = "Review: {input}\nSentiment:"
LABELS = ["positive", "negative"]


def accuracy(predicted: list[str], test: list[dict[str, str]]) -> float:
    return sum(p == ex["output"] for p, ex in zip(predicted, test, strict=True)) / len(test)


def zero_shot(test: list[dict[str, str]], data_dir: str) -> dict[str, float]:
    """Accuracy of the frozen model with no soft prompt, scoring the two label words after an instruction."""
    import torch

    from app.config import Settings
    from app.engine.core.one_prompt import classify, generate
    from app.engine.core.text import TaskSpec
    from app.model_loading import load_configured_model

    torch.manual_seed(0)
    model = load_configured_model(Settings(data_dir=Path(data_dir)))
    inputs = [ex["input"] for ex in test]
    results: dict[str, float] = {}
    for name, template in ZERO_SHOT_TEMPLATES.items():
        spec = TaskSpec(kind="classification", template=template, labels=tuple(LABELS))
        scores = classify(model, None, spec, inputs, batch_size=16)
        results[f"{name} (label-scored)"] = accuracy([max(s, key=s.__getitem__) for s in scores], test)
    # What the model answers on its own: greedy text, counted right only if it starts with the gold label.
    spec = TaskSpec(kind="generation", template=ZERO_SHOT_TEMPLATES["zero-shot chat instruction"])
    texts = generate(model, None, spec, inputs, max_new_tokens=3, batch_size=16)
    free = [
        "positive"
        if t.strip().lower().startswith("positive")
        else "negative"
        if t.strip().lower().startswith("negative")
        else t
        for t in texts
    ]
    results["zero-shot chat instruction (free generation)"] = accuracy(free, test)
    first_words = [t.strip().split(" ")[0] if t.strip() else "" for t in texts]
    top = max(set(first_words), key=first_words.count)
    print(f"  free generation: most common first word {top!r} ({first_words.count(top)}/{len(texts)})", flush=True)
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(client: httpx.Client, server: subprocess.Popen[bytes], timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            response = client.get("/healthz")
            if response.status_code == 200:
                return response.json()  # type: ignore[no-any-return]
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SystemExit("the server did not become healthy")


def train_and_evaluate(
    client: httpx.Client, train: list[dict[str, str]], test: list[dict[str, str]], hyper: dict[str, Any]
) -> dict[str, Any]:
    def check(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise SystemExit(
                f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
            )
        return response.json()

    check(
        client.post(
            "/v1/tasks",
            json={"name": "sentiment", "kind": "classification", "labels": LABELS, "template": TRAIN_TEMPLATE},
        )
    )
    body = "\n".join(json.dumps(ex) for ex in train).encode()
    dataset = check(client.post("/v1/datasets", files={"file": ("rt-train.jsonl", body)}))
    job = check(
        client.post("/v1/jobs", json={"task": "sentiment", "dataset_id": dataset["id"], "hyperparameters": hyper})
    )
    seen = 0
    while job["status"] in ("queued", "running"):
        time.sleep(2)
        job = check(client.get(f"/v1/jobs/{job['id']}"))
        events = check(client.get(f"/v1/jobs/{job['id']}/events", params={"after": seen}))
        for event in events:
            print(f"  [{event['kind']}] {event['message']}", flush=True)
            seen = event["id"]
    if job["status"] != "succeeded":
        raise SystemExit(f"training failed: {job['error']}")
    prompt = check(client.get(f"/v1/prompts/{job['result_prompt_id']}"))
    predicted: list[str] = []
    started = time.perf_counter()
    for i in range(0, len(test), 32):
        batch = [ex["input"] for ex in test[i : i + 32]]
        result = check(client.post("/v1/infer", json={"task": "sentiment", "inputs": batch}))
        predicted += [out["label"] for out in result["outputs"]]
    infer_seconds = time.perf_counter() - started
    return {
        "job": job,
        "prompt": prompt,
        "accuracy": accuracy(predicted, test),
        "infer_per_second": len(test) / infer_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1000, help="training examples (balanced)")
    parser.add_argument("--test", type=int, default=400, help="held-out test examples (balanced)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=20, help="num_virtual_tokens")
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--init", default="text")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=os.environ.get("PROMPTBANK_DATA_DIR", "data"))
    parser.add_argument("--skip-zero-shot", action="store_true")
    args = parser.parse_args()

    train, test = balanced_splits(args.train, args.test, seed=args.seed)
    print(f"data: {len(train)} train / {len(test)} test snippets (balanced, seed {args.seed})", flush=True)
    baselines = {} if args.skip_zero_shot else zero_shot(test, args.data_dir)

    hyper = {
        "num_virtual_tokens": args.tokens,
        "init": args.init,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "eval_every": args.eval_every,
        "seed": args.seed,
    }
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "PROMPTBANK_DATA_DIR": args.data_dir,
            "PROMPTBANK_DATABASE_URL": f"sqlite:///{Path(tmp) / 'bench.db'}",
            "PROMPTBANK_LOG_LEVEL": "WARNING",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--log-level", "warning"], env=env
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
                health = wait_healthy(client, server)
                print(f"server up: {health['model']['name']} on {health['model']['device']}", flush=True)
                result = train_and_evaluate(client, train, test, hyper)
        finally:
            server.terminate()
            server.wait(timeout=120)

    metrics = result["prompt"]["metrics"]
    print("\n| method | held-out accuracy |\n|---|---|")
    for name, value in baselines.items():
        print(f"| {name} | {value:.3f} |")
    print(
        f"| promptbank prompt tuning ({args.tokens} tokens, {args.init} init, {args.steps} steps, "
        f"batch {args.batch_size}) | {result['accuracy']:.3f} |"
    )
    print(
        f"\nseconds per training step: {metrics.get('seconds_per_step', float('nan')):.2f} "
        f"(best checkpoint at step {metrics.get('best_step')}; validation accuracy "
        f"{metrics.get('best_val_accuracy')})"
    )
    print(
        f"inference over HTTP: {result['infer_per_second']:.1f} inputs/s; prompt size "
        f"{result['prompt']['size_bytes']} bytes"
    )


if __name__ == "__main__":
    main()
