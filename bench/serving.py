"""Serving benchmark: many tasks on one frozen model, every configuration side by side in one process.

    python -m bench.serving [--tasks 1,8,64,512] [--concurrency 1,32] [--requests 64] [--repeats 3]
                            [--configs raw,raw_input_only,peft_grouped,peft_sequential,engine,http]
                            [--server-env OMP_WAIT_POLICY=PASSIVE]

Workload: T classification tasks ("Review: {input}\\nSentiment:", labels positive/negative), each a seeded random
20-vector prompt scaled to the embedding std; Rotten Tomatoes snippets cut to their first 48 tokens; request i of
round r carries one input to task (r * requests + i) % T, so at large T every round meets other tasks (the
warm-up touches all T). Configurations: (a) raw: the frozen model with each row's prompt prepended, batches of 16,
nothing cached; (f) raw_input_only: the inputs alone; (b) peft_grouped: PEFT prompt tuning, one
adapter per task, requests grouped by task, set_adapter per group; (c) peft_sequential: one request at a time;
(d) engine: promptbank's Batcher in-process; (e) http: promptbank over HTTP. Per (config, T, concurrency):
requests/s, input tokens/s, p50/p99 latency, peak RSS, each the median of --repeats rounds after a warm-up;
answers are checked against the raw computation; then the ratios. Table also written to bench/results/serving.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.text import TaskSpec
from bench.serving_http import HttpService
from bench.serving_report import Cell, Measurement, agreement, peak_mb, ratios, reset_peak, table
from bench.serving_runners import EngineRunner, PeftRunner, RawRunner, RoundResult
from bench.serving_workload import (
    MULTI,
    SINGLE,
    Request,
    Scores,
    make_requests,
    multi_token_labels,
    random_prompts,
    raw_scores,
    snippets,
)

CONFIGS = ["raw", "raw_input_only", "peft_grouped", "peft_sequential", "engine", "http"]
SLOW = {"peft_grouped", "peft_sequential"}  # one forward per task in the window: capped at --slow-requests
Run = Callable[[list[Request], int], RoundResult]


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int_list, default=[1, 8, 64, 512], help="numbers of distinct tasks T")
    parser.add_argument("--concurrency", type=int_list, default=[1, 32], help="requests in flight")
    parser.add_argument("--requests", type=int, default=64, help="requests per round")
    parser.add_argument(
        "--slow-requests", type=int, default=24, help="requests per round for peft_* and for every config at c=1"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per cell (medians are reported)")
    parser.add_argument("--configs", type=lambda s: s.split(","), default=CONFIGS)
    parser.add_argument("--multi-label-tasks", type=int, default=64, help="T of the multi-token label check (0: off)")
    parser.add_argument("--check-rows", type=int, default=16, help="requests per T checked against raw")
    parser.add_argument("--input-tokens", type=int, default=48, help="snippets are cut to this many tokens")
    parser.add_argument("--prompt-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16, help="rows per forward for raw and peft")
    parser.add_argument("--pool-capacity", type=int, default=1024, help="engine prompt pool (server default 1024)")
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (every configuration and the server)")
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the http server (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/serving.md")
    args = parser.parse_args()
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes KEY=VALUE")
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {','.join(CONFIGS)}")
    return args


def reference(
    frozen: FrozenModel, spec: TaskSpec, prompts: list[torch.Tensor], requests: list[Request]
) -> dict[int, Scores]:
    """The raw computation (each row's prompt prepended, nothing cached) on the checked requests."""
    scores: dict[int, Scores] = {}
    for start in range(0, len(requests), 16):
        chunk = requests[start : start + 16]
        rows = raw_scores(frozen, spec, [prompts[r.task] for r in chunk], [r.text for r in chunk])
        scores.update({request.index: row for request, row in zip(chunk, rows, strict=True)})
    return scores


def measure(
    run: Run, requests: list[Request], concurrency: int, server_pid: int | None
) -> tuple[RoundResult, Measurement]:
    """One timed round with the peak RSS of this process (and of the server) reset just before it."""
    reset_peak()
    if server_pid is not None:
        reset_peak(server_pid)
    result = run(requests, concurrency)
    server = peak_mb(server_pid) if server_pid is not None else None
    return result, Measurement.of(result, requests, peak_mb(), server)


def main() -> None:
    args = parse_args()
    began = time.perf_counter()
    torch.manual_seed(args.seed)
    frozen = load_frozen_model(
        Path(args.data_dir) / "models" / "SmolLM2-135M-Instruct", device=args.device, dtype=args.dtype
    )
    prompts = random_prompts(frozen, max(args.tasks), args.prompt_tokens, seed=args.seed)
    texts = snippets(frozen, args.requests, args.input_tokens, seed=args.seed)
    if not multi_token_labels(frozen, MULTI) or multi_token_labels(frozen, SINGLE):
        raise SystemExit(f"expected {MULTI.labels} to span several tokens and {SINGLE.labels} one each.")
    server_env = {"PROMPTBANK_DEVICE": args.device, "PROMPTBANK_DTYPE": args.dtype}
    server_env.update(item.split("=", 1) for item in args.server_env)
    http = HttpService(frozen, prompts, SINGLE, args.data_dir, server_env) if "http" in args.configs else None
    if http is not None:
        http.start()  # loads its model while this process builds its configurations
    runs: dict[str, Run] = {}
    engine: EngineRunner | None = None
    try:
        runs["raw"] = RawRunner(frozen, prompts, SINGLE, args.batch_size).run
        runs["raw_input_only"] = RawRunner(frozen, None, SINGLE, args.batch_size).run
        if SLOW & set(args.configs):
            peft = PeftRunner(frozen, prompts, SINGLE, args.batch_size)
            runs["peft_grouped"], runs["peft_sequential"] = peft.run_grouped, peft.run_sequential
        if "engine" in args.configs:
            engine = EngineRunner(
                frozen,
                prompts,
                pool_capacity=args.pool_capacity,
                max_batch_tokens=args.max_batch_tokens,
                max_wait_ms=args.max_wait_ms,
            )
            runs["engine"] = partial(engine.run, spec=SINGLE)
            runs["engine_multilabel"] = partial(engine.run, spec=MULTI)
        if http is not None:
            http.wait_ready()
            runs["http"] = http.run
        setup_peak = peak_mb()  # before the first round resets it
        cells, multi, pools = benchmark(args, frozen, prompts, texts, runs, http, engine)
    finally:
        if engine is not None:
            engine.close()
        if http is not None:
            http.close()
    whole_run_peak = max([setup_peak, *(m.rss_mb for cell in cells for m in cell.rounds)])
    report(args, frozen, cells, multi, pools, time.perf_counter() - began, whole_run_peak, http)


def benchmark(
    args: argparse.Namespace,
    frozen: FrozenModel,
    prompts: list[torch.Tensor],
    texts: list[str],
    runs: dict[str, Run],
    http: HttpService | None,
    engine: EngineRunner | None,
) -> tuple[list[Cell], tuple[int, int] | None, list[str]]:
    """Every T in turn: a warm-up of each configuration, then per concurrency the repeats, configs interleaved."""
    multi_t = args.multi_label_tasks if args.multi_label_tasks in args.tasks else max(args.tasks)
    multi = (multi_t, max(args.concurrency)) if args.multi_label_tasks and "engine" in args.configs else None
    cells: list[Cell] = []
    pools: list[str] = []
    began = time.perf_counter()
    for t in args.tasks:
        full = make_requests(frozen, SINGLE, texts, args.requests, t)
        checked = full[: args.check_rows]  # round 0's first requests
        # Round r sends its requests to tasks r * requests, r * requests + 1, ... (mod T): at T=512 the rounds
        # touch different tasks, not the same 64 again; the warm-up has touched all T.
        rounds = [
            make_requests(frozen, SINGLE, texts, args.requests, t, first_task=r * args.requests)
            for r in range(args.repeats)
        ]
        everyone = make_requests(frozen, SINGLE, texts, max(t, args.requests), t)
        expected = {"single": reference(frozen, SINGLE, prompts, checked)}
        configs = list(args.configs)
        if multi is not None and multi[0] == t:
            configs.append("engine_multilabel")
            expected["multi"] = reference(frozen, MULTI, prompts, checked)
        for config in configs:
            # Warm-up: the engine and the server must have seen every prompt of the workload; the others only
            # need their kernels warm.
            warm = everyone if config in ("engine", "engine_multilabel", "http") else full[: args.batch_size]
            runs[config](warm, max(args.concurrency))
        for c in args.concurrency:
            here = {
                config: Cell(config, t, c) for config in configs if config != "engine_multilabel" or multi == (t, c)
            }
            for repeat in range(args.repeats):
                for config, cell in here.items():
                    count = args.slow_requests if config in SLOW or c == 1 else args.requests
                    pid = http.pid if config == "http" and http is not None else None
                    result, measurement = measure(runs[config], rounds[repeat][:count], c, pid)
                    cell.rounds.append(measurement)
                    if repeat == 0 and config != "raw_input_only":
                        cell.check(result.outputs, expected["multi" if config == "engine_multilabel" else "single"])
                    print(
                        f"[{(time.perf_counter() - began) / 60:4.1f} min] T={t} c={c} "
                        f"round {repeat + 1}/{args.repeats} {config}: "
                        f"{measurement.requests_per_s:.2f} req/s, p50 {measurement.p50_ms:.0f} ms",
                        flush=True,
                    )
            cells += here.values()
        pools.append(f"T={t}: " + ", ".join(pool_summary(engine, http)))
    return cells, multi, pools


def pool_summary(engine: EngineRunner | None, http: HttpService | None) -> list[str]:
    """Entries and MiB of the engine's and the server's prompt pools, as GET /v1/stats reports them."""
    parts = []
    for name, stats in (
        ("engine", engine.pool.stats() if engine is not None else {}),
        ("http server", http.pool_stats() if http is not None else {}),
    ):
        if stats:
            parts.append(f"{name} {stats['entries']} prompts, {stats['bytes'] / 2**20:,.0f} MiB")
    return parts or ["-"]


def device_name(frozen: FrozenModel) -> str:
    """The device in words: the card's name on CUDA."""
    if frozen.device.type == "cuda":
        return torch.cuda.get_device_name(frozen.device)
    return "CPU"


def report(
    args: argparse.Namespace,
    frozen: FrozenModel,
    cells: list[Cell],
    multi: tuple[int, int] | None,
    pools: list[str],
    seconds: float,
    peak: float,
    http: HttpService | None,
) -> None:
    command = "python -m bench.serving " + shlex.join(sys.argv[1:])
    notes = [
        f"Command: `{command.strip()}`; wall time {seconds / 60:.1f} min; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; peak RSS of the bench process over the whole run {peak:,.0f} MiB.",
        f"Workload: SmolLM2-135M-Instruct {str(frozen.dtype).removeprefix('torch.')} on {device_name(frozen)}; "
        f"Rotten Tomatoes snippets cut to their first "
        f"{args.input_tokens} tokens; request i of round r to task (r * {args.requests} + i) % T, every task "
        f"touched once in the warm-up; prompts of {args.prompt_tokens} random vectors. "
        "tok/s counts the rendered input tokens (template + snippet), not the virtual tokens.",
        f"Each figure is the median of {args.repeats} rounds after a warm-up round; configurations are interleaved "
        f"round by round. Rounds hold {args.requests} requests, except {args.slow_requests} for peft_grouped, "
        "peft_sequential and every configuration at concurrency 1 (per-request figures, so they compare).",
        "engine and http: closed loop, c client threads each with one request in flight. raw, raw_input_only, "
        "peft_*: requests arrive in windows of c and a window is served before the next arrives (lock-step); "
        "latency = window arrival to the end of the forward pass that answered the request.",
        "rows/batch: rows per forward pass (raw, peft) or per batcher round (engine, http: from GET /v1/stats). "
        "RSS: the peak resident set of the bench process during the round, and for http of the server process: "
        "VmHWM from /proc/<pid>/status, reset through /proc/<pid>/clear_refs before each round (on Linux "
        "getrusage's ru_maxrss reads the same counter and is reset with it).",
        f"agree: argmax agreement with the raw computation (each row's prompt prepended, no cache) on the first "
        f"{args.check_rows} requests of the first round, and the largest absolute difference in a label's probability. "
        f"engine_multilabel: labels {list(MULTI.labels)} (several tokens each) instead of {list(SINGLE.labels)}.",
    ]
    notes.append("Prompt pools after each T (pools keep the prompts of earlier T too): " + "; ".join(pools) + ".")
    if args.server_env:
        notes.append(f"http server started with extra environment {' '.join(args.server_env)}.")
    notes.append("Agreement with the raw computation: " + "; ".join(agreement(cells)) + ".")
    if http is not None and http.health:
        notes.append(f"http server: {http.health.get('model')}")
    text = "\n".join(
        [
            "## Serving benchmark",
            "",
            table(cells),
            "",
            "### Throughput ratios (requests/s)",
            "",
            ratios(cells, args.tasks, args.concurrency, multi),
            "",
            *(f"- {note}" for note in notes),
            "",
        ]
    )
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
