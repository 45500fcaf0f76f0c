"""Overload, measured as a client sees it: `python -m bench.overload` (localhost only, bounded in requests and time).

A promptbank server (uvicorn, fresh SQLite, the bundled SmolLM2, random 20-token prompts stored for 4
classification tasks and 1 generation task) is started with a low in-flight limit, then:

1. burst: --burst requests sent open loop at --rate per second (each at its own time, whatever became of those
   before it, its latency counted from that time: arrivals as many independent users make them), or from --clients
   closed-loop clients with --rate 0, each with timeout_ms --deadline-ms, while a poller asks GET /healthz every
   50 ms. Reported: accepted and rejected counts, latency p50/p99 of each, /healthz p50/p99.
   Targets: a rejection's p99 < 100 ms, an accepted request's p99 within its deadline, /healthz p99 < 200 ms.
2. long vs short: a one-input classification request, --short sequential times on an idle server, then again while
   one client keeps asking for a --long-tokens generation. Target: p99 with the long generation <= 3x idle.

Figures go to stdout and --out (JSON, and .md beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.text import DEFAULT_TEMPLATES, TaskSpec
from app.engine.formats.bundled import ensure_bundled_model
from bench.serving_http import HttpService, store_prompts

SENTIMENT = TaskSpec("classification", "Review: {input}\nSentiment:", ("positive", "negative"))
ANSWER = TaskSpec("generation", DEFAULT_TEMPLATES["generation"])
TEXT = "A warm, funny and beautifully acted film about two brothers."


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99)}


def add_generation_task(service: HttpService, frozen: FrozenModel, tokens: int) -> None:
    """A generation task with a random prompt, stored as a finished job would."""
    with httpx.Client(base_url=service.base_url, timeout=60) as client:
        response = client.post("/v1/tasks", json={"name": "writer", "kind": "generation", "template": ANSWER.template})
        response.raise_for_status()
        task_id = int(response.json()["id"])
    store_prompts(service.database_url, frozen, {task_id: torch.randn(tokens, frozen.hidden_size) * 0.02})


async def burst(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """--burst requests, open loop at --rate per second (each sent at its time, whatever the answers before it;
    its latency counts from that time), or closed loop from --clients clients when --rate is 0."""
    accepted: list[float] = []
    rejected: list[float] = []
    other: dict[str, int] = {}
    health: list[float] = []
    done = asyncio.Event()
    connections = args.burst if args.rate > 0 else args.clients
    limits = httpx.Limits(max_connections=connections + 4, max_keepalive_connections=connections + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:

        async def one(number: int, since: float) -> None:
            body = {"task": f"bench-{number % 4}", "inputs": [TEXT], "timeout_ms": args.deadline_ms}
            response = await client.post("/v1/infer", json=body)
            elapsed = (time.perf_counter() - since) * 1000
            if response.status_code == 200:
                accepted.append(elapsed)
            elif response.status_code == 503 and response.json()["error"]["code"] == "overloaded":
                rejected.append(elapsed)
            else:
                key = f"{response.status_code} {response.json()['error']['code']}"
                other[key] = other.get(key, 0) + 1

        queue: asyncio.Queue[int] = asyncio.Queue()
        for number in range(args.burst):
            queue.put_nowait(number)

        async def one_client() -> None:
            while not queue.empty():
                await one(queue.get_nowait(), time.perf_counter())

        async def open_loop() -> None:
            sent = []
            for number in range(args.burst):
                at = began + number / args.rate
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                sent.append(asyncio.create_task(one(number, at)))
            await asyncio.gather(*sent)

        async def poll_health() -> None:
            while not done.is_set():
                started = time.perf_counter()
                response = await client.get("/healthz")
                health.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text
                await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll_health())
        began = time.perf_counter()
        load = open_loop() if args.rate > 0 else asyncio.gather(*(one_client() for _ in range(args.clients)))
        await asyncio.wait_for(load, args.max_seconds)
        seconds = time.perf_counter() - began
        done.set()
        await poller
    return {
        "seconds": seconds,
        "accepted": summary(accepted),
        "rejected": summary(rejected),
        "other": other,
        "healthz": summary(health),
    }


async def long_vs_short(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:

        async def shorts() -> list[float]:
            times = []
            for _ in range(args.short):
                started = time.perf_counter()
                response = await client.post("/v1/infer", json={"task": "bench-0", "inputs": ["good"]})
                response.raise_for_status()
                times.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.05)
            return times

        idle = await shorts()
        stop = asyncio.Event()
        generated: list[float] = []

        async def long_client() -> None:
            body = {"task": "writer", "inputs": [TEXT], "max_new_tokens": args.long_tokens, "stop": []}
            while not stop.is_set():
                started = time.perf_counter()
                response = await client.post("/v1/infer", json=body)
                response.raise_for_status()
                generated.append((time.perf_counter() - started) * 1000)

        runner = asyncio.create_task(long_client())
        await asyncio.sleep(0.5)
        busy = await shorts()
        stop.set()
        await runner
    ratio = (percentile(busy, 0.99) or 0) / (percentile(idle, 0.99) or 1)
    return {"idle": summary(idle), "with_long": summary(busy), "long": summary(generated), "p99_ratio": ratio}


def report(figures: dict[str, Any]) -> str:
    b, lg = figures["burst"], figures["long_vs_short"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    lines = [
        f"burst: {figures['args']['burst']} requests "
        + (
            f"sent at {figures['args']['rate']:g}/s"
            if figures["args"].get("rate")
            else f"from {figures['args']['clients']} clients"
        )
        + f", in-flight limit "
        f"{figures['args']['limit']}, timeout_ms {figures['args']['deadline_ms']} ({b['seconds']:.1f} s)",
        "",
        "| | count | p50 ms | p99 ms | target |",
        "|---|---|---|---|---|",
        f"| accepted | {b['accepted']['count']} | {ms(b['accepted']['p50_ms'])} | {ms(b['accepted']['p99_ms'])} | "
        f"p99 <= {figures['args']['deadline_ms']} |",
        f"| rejected 503 overloaded | {b['rejected']['count']} | {ms(b['rejected']['p50_ms'])} | "
        f"{ms(b['rejected']['p99_ms'])} | p99 < 100 |",
        f"| GET /healthz meanwhile | {b['healthz']['count']} | {ms(b['healthz']['p50_ms'])} | "
        f"{ms(b['healthz']['p99_ms'])} | p99 < 200 |",
        "",
        f"other answers: {b['other'] or 'none'}",
        "",
        "| short request (1 input) | count | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| idle | {lg['idle']['count']} | {ms(lg['idle']['p50_ms'])} | {ms(lg['idle']['p99_ms'])} |",
        f"| while {figures['args']['long_tokens']}-token generations run | {lg['with_long']['count']} | "
        f"{ms(lg['with_long']['p50_ms'])} | {ms(lg['with_long']['p99_ms'])} |",
        f"| (the long generations themselves) | {lg['long']['count']} | {ms(lg['long']['p50_ms'])} | "
        f"{ms(lg['long']['p99_ms'])} |",
        "",
        f"short p99 with long generations / idle: {lg['p99_ratio']:.2f} (target <= 3)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=8, help="PROMPTBANK_MAX_INFLIGHT_REQUESTS of the server")
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100, help="requests/s sent open loop; 0: closed loop")
    parser.add_argument("--clients", type=int, default=64, help="closed-loop clients (with --rate 0)")
    parser.add_argument("--deadline-ms", type=int, default=5000)
    parser.add_argument("--short", type=int, default=30)
    parser.add_argument("--long-tokens", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--server-env", action="append", default=[], help="NAME=VALUE for the server, repeatable")
    parser.add_argument("--out", default="bench/results/overload.json")
    args = parser.parse_args()
    frozen = load_frozen_model(ensure_bundled_model(Path(args.data_dir) / "models"), device="cpu")
    torch.manual_seed(0)
    prompts = [torch.randn(20, frozen.hidden_size) * 0.02 for _ in range(4)]
    env = {"PROMPTBANK_MAX_INFLIGHT_REQUESTS": str(args.limit), **dict(item.split("=", 1) for item in args.server_env)}
    with HttpService(frozen, prompts, SENTIMENT, args.data_dir, extra_env=env) as service:
        service.start()
        service.wait_ready()
        add_generation_task(service, frozen, 20)
        figures = {
            "args": vars(args),
            "burst": asyncio.run(burst(service.base_url, args)),
            "long_vs_short": asyncio.run(long_vs_short(service.base_url, args)),
        }
    text = report(figures)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    out.with_suffix(".md").write_text(text + "\n")
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
