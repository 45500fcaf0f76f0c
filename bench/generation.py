"""Generation served like classification, measured: many generation tasks on one frozen model, short and long
outputs mixed, every configuration side by side in one process.

    python -m bench.generation [--tasks 1,64,512] [--concurrency 32] [--requests 64]
                               [--configs engine,raw,peft_grouped,peft_sequential,http] [--short 4] [--long 32]
                               [--out bench/results/generation.json]

Workload: T generation tasks ("Input: {input}\\nOutput:"), each a seeded random 20-vector prompt scaled to the
embedding std; Rotten Tomatoes snippets cut to 24 tokens; request i goes to task i % T and asks for --long new
tokens when i % 4 == 0, else --short. Configurations: engine: promptbank's Batcher in-process (continuous batching),
c client threads in a closed loop; peft_grouped: PEFT prompt tuning (one adapter per task), a window of c requests
grouped by task and by max_new_tokens, one `generate` per group (greedy); peft_sequential: one request at a time;
raw: the model without any prompt, a window grouped by max_new_tokens alone, one `generate` per group (a reference:
no per-task work at all); http: `uvicorn app.main:app` in a subprocess with the same prompts stored as the tasks'
versions, c client threads, one POST /v1/infer per request. Per cell: new tokens/s (the rows' max_new_tokens over
the round's wall time: the same work for every configuration; the answers' own tokens, re-encoded, as a second
figure), request latency p50/p99, the median of --repeats rounds after a warm-up. Checks: every engine answer equals
the same row generated alone by the engine (greedy), and how many of PEFT's and HTTP's answers equal the engine's.
Then a 1-token request's latency alone and while --background clients keep asking for --background-tokens-token
generations (continuous batching lets it in between decode steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import torch

from app.engine.core.mixed import Row
from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec, encode_example, output_text, render
from app.engine.formats.bundled import ensure_bundled_model
from app.engine.serving.batcher import Batcher, BatcherOptions
from app.engine.serving.pool import PromptPool
from bench.serving_http import HttpService
from bench.serving_report import percentile
from bench.serving_runners import closed_loop, lockstep
from bench.serving_workload import Request, random_prompts, snippets

SPEC = TaskSpec("generation", "Input: {input}\nOutput:")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _requests(frozen: FrozenModel, texts: list[str], count: int, tasks: int) -> list[Request]:
    return [
        Request(
            i,
            i % tasks,
            texts[i % len(texts)],
            len(encode_example(frozen, SPEC, texts[i % len(texts)], None).input_ids),
        )
        for i in range(count)
    ]


class Engine:
    def __init__(self, frozen: FrozenModel, prompts: list[torch.Tensor]) -> None:
        self.pool = PromptPool(frozen, 1024)
        self.batcher = Batcher(frozen, self.pool, BatcherOptions(max_queue_rows=10**5))
        self.batcher.start()
        self.prompts = prompts

    def answer(self, request: Request, new_tokens: int) -> str:
        row = Row(request.task, SPEC, request.text, max_new_tokens=new_tokens)
        # As the server does: the caller hands over the prompt the pool lacks (a plain prompt enters as its prefix).
        given = {task: Segments(prefix=self.prompts[task]) for task in self.batcher.missing([request.task])}
        return str(self.batcher.submit([row], prompts=given).result()[0])


class Peft:
    """PEFT prompt tuning, one adapter per task, greedy `generate` (left-padded: generate passes position ids
    from the attention mask), finished rows of a group padded until its longest ends, as `generate` does."""

    def __init__(self, frozen: FrozenModel, prompts: list[torch.Tensor]) -> None:
        from peft import PromptTuningConfig, TaskType, get_peft_model

        self.frozen = frozen
        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=int(prompts[0].shape[0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model: Any = get_peft_model(frozen.model, config, adapter_name="task0")
            for task in range(1, len(prompts)):
                self.model.add_adapter(f"task{task}", config)
        with torch.no_grad():
            for task, prompt in enumerate(prompts):
                encoders: Any = self.model.prompt_encoder
                encoders[f"task{task}"].embedding.weight.copy_(prompt)
        self.model.eval()

    def generate(self, task: int, requests: list[Request], new_tokens: int) -> list[str]:
        self.model.set_adapter(f"task{task}")
        return hf_generate(self.model, self.frozen, requests, new_tokens)


@torch.no_grad()
def hf_generate(model: Any, frozen: FrozenModel, requests: list[Request], new_tokens: int) -> list[str]:
    """Greedy `generate` of one left-padded group (generate passes position ids from the attention mask); finished
    rows are padded until the group's longest ends, as `generate` does."""
    ids = [encode_example(frozen, SPEC, r.text, None).input_ids for r in requests]
    width = max(len(row) for row in ids)
    pad = frozen.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in ids])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(
            input_ids=input_ids.to(frozen.device),
            attention_mask=mask.to(frozen.device),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=pad,
        )
    texts = []
    for request, row in zip(requests, out[:, width:].tolist(), strict=True):
        tokens = row[: row.index(pad)] if pad in row else row
        texts.append(output_text(render(SPEC.template, request.text), frozen.decode(tokens)))
    return texts


class Http:
    """promptbank over HTTP (bench/serving_http.HttpService: uvicorn, fresh SQLite, the same prompts stored as the
    tasks' versions), c client threads in a closed loop, one input per POST /v1/infer."""

    def __init__(self, frozen: FrozenModel, prompts: list[torch.Tensor], data_dir: str) -> None:
        self.service = HttpService(frozen, prompts, SPEC, data_dir)
        self.service.start()
        self.service.wait_ready()

    def run(self, requests: list[Request], concurrency: int, new_tokens: Any) -> Any:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        with httpx.Client(base_url=self.service.base_url, timeout=600, limits=limits) as client:

            def call(request: Request) -> str:
                body = {
                    "task": self.service.task_name(request.task),
                    "inputs": [request.text],
                    "max_new_tokens": new_tokens(request),
                }
                response = client.post("/v1/infer", json=body)
                if response.status_code != 200:
                    raise RuntimeError(f"POST /v1/infer: {response.status_code} {response.text}")
                return str(response.json()["outputs"][0]["text"])

            return closed_loop(requests, concurrency, call)  # type: ignore[arg-type]

    def close(self) -> None:
        self.service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=_ints, default=[1, 64, 512])
    parser.add_argument("--concurrency", type=_ints, default=[32])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--configs",
        type=lambda s: s.split(","),
        default=["engine", "raw", "peft_grouped", "peft_sequential", "http"],
    )
    parser.add_argument("--short", type=int, default=4)
    parser.add_argument("--long", type=int, default=32)
    parser.add_argument("--background", type=int, default=4, help="clients of long generations in the latency check")
    parser.add_argument("--background-tokens", type=int, default=128)
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/generation.json")
    args = parser.parse_args()
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - began) / 60:6.1f} min] {message}", flush=True)

    torch.manual_seed(0)
    frozen = load_frozen_model(ensure_bundled_model(Path(args.data_dir) / "models"), device="cpu")
    prompts = random_prompts(frozen, max(args.tasks), 20)
    texts = snippets(frozen, 64, 24)
    engine = Engine(frozen, prompts)
    peft = Peft(frozen, prompts) if any(c.startswith("peft") for c in args.configs) else None

    def new_tokens(request: Request) -> int:
        return args.long if request.index % 4 == 0 else args.short

    def count(answers: dict[int, Any]) -> int:
        return sum(len(frozen.encode(text)) for text in answers.values())

    def run(config: str, requests: list[Request], concurrency: int) -> tuple[float, list[float], dict[int, Any]]:
        if config == "engine":
            result = closed_loop(requests, concurrency, lambda r: engine.answer(r, new_tokens(r)))  # type: ignore[arg-type,return-value]
            return result.wall, result.latencies, result.outputs
        if config == "http":
            assert http is not None
            result = http.run(requests, concurrency, new_tokens)
            return result.wall, result.latencies, result.outputs
        if config == "raw":  # the model without any prompt, windows grouped by max_new_tokens: a reference

            def raw(window: list[Request]) -> Any:
                lengths = sorted({new_tokens(request) for request in window})
                for n in lengths:
                    group = [request for request in window if new_tokens(request) == n]
                    yield list(zip(group, hf_generate(frozen.model, frozen, group, n), strict=True))

            result = lockstep(requests, concurrency, raw)
            return result.wall, result.latencies, result.outputs
        assert peft is not None

        def grouped(window: list[Request]) -> Any:
            groups: dict[tuple[int, int], list[Request]] = {}
            for request in window:
                groups.setdefault((request.task, new_tokens(request)), []).append(request)
            for (task, n), group in groups.items():
                yield list(zip(group, peft.generate(task, group, n), strict=True))

        def sequential(window: list[Request]) -> Any:
            for request in window:
                yield [(request, peft.generate(request.task, [request], new_tokens(request))[0])]

        result = lockstep(requests, concurrency, grouped if config == "peft_grouped" else sequential)
        return result.wall, result.latencies, result.outputs

    cells: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    http: Http | None = None
    for tasks in args.tasks:
        requests = _requests(frozen, texts, args.requests, tasks)
        alone = {r.index: engine.answer(r, new_tokens(r)) for r in requests[:16]}
        if "http" in args.configs:  # its own process, with this cell's tasks (stopped before the next count)
            http = Http(frozen, prompts[:tasks], args.data_dir)
        for concurrency in args.concurrency:
            for config in args.configs:
                run(config, requests[:8], concurrency)  # warm-up
                rounds = [run(config, requests, concurrency) for _ in range(args.repeats)]
                wall = statistics.median(r[0] for r in rounds)
                latencies = sorted(x for r in rounds for x in r[1])
                outputs = rounds[-1][2]
                cell = {
                    "config": config,
                    "tasks": tasks,
                    "concurrency": concurrency,
                    # The same work for every configuration: each row's max_new_tokens (rows that end at eos
                    # sooner count at their limit; the answer-token rate below shows how many were decoded).
                    "tokens_per_s": sum(new_tokens(r) for r in requests) / wall,
                    "answer_tokens_per_s": count(outputs) / wall,
                    "requests_per_s": len(requests) / wall,
                    "p50_ms": 1000 * percentile(latencies, 0.5),
                    "p99_ms": 1000 * percentile(latencies, 0.99),
                }
                if config == "engine":
                    cell["equal_to_alone"] = f"{sum(outputs[i] == t for i, t in alone.items())}/{len(alone)}"
                    checks[f"engine_{tasks}"] = outputs
                elif config != "raw":  # the raw model has no prompt: its answers differ by design
                    engine_out = checks.get(f"engine_{tasks}", {})
                    same = sum(engine_out.get(i) == t for i, t in outputs.items())
                    cell["equal_to_engine"] = f"{same}/{len(outputs)}"
                cells.append(cell)
                log(json.dumps(cell))
        if http is not None:
            http.close()
            http = None

    # A 1-token request alone, then beside clients that keep asking for long generations.
    probe = Request(10**6, 0, texts[0], 0)

    def probes() -> list[float]:
        seen = []
        for _ in range(args.probes):
            sent = time.perf_counter()
            engine.answer(probe, 1)
            seen.append(time.perf_counter() - sent)
            time.sleep(0.05)
        return sorted(seen)

    quiet = probes()
    stop = threading.Event()

    def background(client: int) -> None:
        request = Request(10**6 + client, client % max(args.tasks), texts[client % len(texts)], 0)
        while not stop.is_set():
            engine.answer(request, args.background_tokens)

    threads = [threading.Thread(target=background, args=(c,)) for c in range(args.background)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    busy = probes()
    stop.set()
    for thread in threads:
        thread.join()
    beside = {
        "alone_p50_ms": 1000 * percentile(quiet, 0.5),
        "alone_p99_ms": 1000 * percentile(quiet, 0.99),
        "beside_p50_ms": 1000 * percentile(busy, 0.5),
        "beside_p99_ms": 1000 * percentile(busy, 0.99),
    }
    engine.batcher.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "cells": cells, "beside_long": beside}, indent=2))
    print("\n| config | T | c | new tokens/s | answer tokens/s | requests/s | p50 ms | p99 ms | check |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in cells:
        check = c.get("equal_to_alone") or c.get("equal_to_engine") or "-"
        print(
            f"| {c['config']} | {c['tasks']} | {c['concurrency']} | {c['tokens_per_s']:.1f} | "
            f"{c['answer_tokens_per_s']:.1f} | "
            f"{c['requests_per_s']:.2f} | {c['p50_ms']:.0f} | {c['p99_ms']:.0f} | {check} |"
        )
    print(
        f"\n1-token request: alone p50 {beside['alone_p50_ms']:.0f} ms, p99 {beside['alone_p99_ms']:.0f} ms; beside "
        f"{args.background} clients of {args.background_tokens}-token generations "
        f"p50 {beside['beside_p50_ms']:.0f} ms, "
        f"p99 {beside['beside_p99_ms']:.0f} ms ({beside['beside_p99_ms'] / beside['alone_p99_ms']:.1f}x)"
    )
    log(f"done; figures in {out}")


if __name__ == "__main__":
    main()
