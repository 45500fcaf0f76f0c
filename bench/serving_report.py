"""Measurements of the serving benchmark: peak memory, per-round figures, medians, the table and the ratios."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.serving_runners import RoundResult
from bench.serving_workload import Request, Scores, label_of


def reset_peak(pid: int | str = "self") -> bool:
    """Reset a process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_mb(pid: int | str = "self") -> float:
    """A process's peak resident set (VmHWM) in MiB, since start or since the last reset_peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1): with fewer than 100 samples p99 is the slowest request."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class Measurement:
    """One timed round of one cell."""

    requests: int
    requests_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    rows_per_batch: float | None
    rss_mb: float
    server_rss_mb: float | None

    @classmethod
    def of(
        cls, result: RoundResult, requests: list[Request], rss_mb: float, server_rss_mb: float | None
    ) -> Measurement:
        tokens = sum(request.tokens for request in requests)
        return cls(
            requests=len(requests),
            requests_per_s=len(requests) / result.wall,
            tokens_per_s=tokens / result.wall,
            p50_ms=percentile(result.latencies, 0.50) * 1000,
            p99_ms=percentile(result.latencies, 0.99) * 1000,
            rows_per_batch=result.rows_per_batch,
            rss_mb=rss_mb,
            server_rss_mb=server_rss_mb,
        )


@dataclass
class Cell:
    """One (configuration, T, concurrency): its timed rounds and its answers checked against the reference."""

    config: str
    tasks: int
    concurrency: int
    rounds: list[Measurement] = field(default_factory=list)
    agreed: int = 0
    compared: int = 0
    max_abs_diff: float = 0.0

    def median(self, name: str) -> float | None:
        values = [getattr(m, name) for m in self.rounds if getattr(m, name) is not None]
        return statistics.median(values) if values else None

    def check(self, outputs: dict[int, Scores], reference: dict[int, Scores]) -> None:
        """Count argmax agreement and the largest probability difference on the reference rows answered."""
        for index, expected in reference.items():
            if index in outputs:
                self.compared += 1
                self.agreed += label_of(outputs[index]) == label_of(expected)
                diffs = [abs(outputs[index][label] - p) for label, p in expected.items()]
                self.max_abs_diff = max(self.max_abs_diff, *diffs)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(cells: list[Cell]) -> str:
    """The markdown table, one line per cell, every figure the median of its rounds."""
    lines = [
        "| config | T | conc | req/round | req/s | tok/s | p50 ms | p99 ms | rows/batch | RSS MiB | server RSS MiB "
        "| agree (max abs dp) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cell in cells:
        if not cell.rounds:
            continue
        agree = f"{cell.agreed}/{cell.compared} ({cell.max_abs_diff:.1e})" if cell.compared else "-"
        lines.append(
            f"| {cell.config} | {cell.tasks} | {cell.concurrency} | {cell.rounds[0].requests} "
            f"| {_fmt(cell.median('requests_per_s'), 2)} | {_fmt(cell.median('tokens_per_s'), 0)} "
            f"| {_fmt(cell.median('p50_ms'), 0)} | {_fmt(cell.median('p99_ms'), 0)} "
            f"| {_fmt(cell.median('rows_per_batch'))} | {_fmt(cell.median('rss_mb'), 0)} "
            f"| {_fmt(cell.median('server_rss_mb'), 0)} | {agree} |"
        )
    return "\n".join(lines)


def agreement(cells: list[Cell]) -> list[str]:
    """One line per configuration: its answers against the raw computation over every T and concurrency."""
    lines = []
    for config in dict.fromkeys(cell.config for cell in cells if cell.compared):
        mine = [cell for cell in cells if cell.config == config and cell.compared]
        agreed, compared = sum(c.agreed for c in mine), sum(c.compared for c in mine)
        worst = max(c.max_abs_diff for c in mine)
        warning = "" if agreed >= 0.95 * compared else " **WARNING: answers differ from the raw computation**"
        lines.append(f"{config} {agreed}/{compared} same label, max abs dp {worst:.1e}{warning}")
    return lines


def _ratio(cells: dict[tuple[str, int, int], Cell], top: tuple[str, int, int], bottom: tuple[str, int, int]) -> str:
    a, b = cells.get(top), cells.get(bottom)
    if a is None or b is None or not a.rounds or not b.rounds:
        return "-"
    return f"{a.median('requests_per_s') / b.median('requests_per_s'):.2f}"  # type: ignore[operator]


RATIO_COLUMNS = [
    ("engine / raw", "engine", "raw"),
    ("engine / raw_input_only", "engine", "raw_input_only"),
    ("engine / peft_grouped", "engine", "peft_grouped"),
    ("engine / peft_sequential", "engine", "peft_sequential"),
    ("http / engine", "http", "engine"),
]


def ratios(cells: list[Cell], tasks: list[int], concurrency: list[int], multi: tuple[int, int] | None) -> str:
    """Throughput ratios (requests/s over requests/s, medians of one run) and the headline lines."""
    by_key = {(cell.config, cell.tasks, cell.concurrency): cell for cell in cells}
    lines = ["| T | conc | " + " | ".join(name for name, _, _ in RATIO_COLUMNS) + " |"]
    lines.append("|---:|---:|" + "---:|" * len(RATIO_COLUMNS))
    for t in tasks:
        for c in concurrency:
            row = [_ratio(by_key, (top, t, c), (bottom, t, c)) for _, top, bottom in RATIO_COLUMNS]
            lines.append(f"| {t} | {c} | " + " | ".join(row) + " |")
    lines.append("")
    for c in concurrency:
        high, low = max(tasks), min(tasks)
        lines.append(
            f"- engine T={high} / engine T={low}, concurrency {c}: "
            f"{_ratio(by_key, ('engine', high, c), ('engine', low, c))}"
        )
    c = max(concurrency)
    for t in tasks:
        lines.append(
            f"- concurrency {c}, T={t}: engine / raw_input_only "
            f"{_ratio(by_key, ('engine', t, c), ('raw_input_only', t, c))}, "
            f"engine / raw {_ratio(by_key, ('engine', t, c), ('raw', t, c))}"
        )
    if 64 in tasks:
        for c in concurrency:
            lines.append(
                f"- T=64, concurrency {c}: engine / peft_sequential "
                f"{_ratio(by_key, ('engine', 64, c), ('peft_sequential', 64, c))}, engine / peft_grouped "
                f"{_ratio(by_key, ('engine', 64, c), ('peft_grouped', 64, c))}"
            )
    for t in tasks:
        lines.append(f"- http / engine, concurrency {c}, T={t}: {_ratio(by_key, ('http', t, c), ('engine', t, c))}")
    if multi is not None:
        t, c = multi
        lines.append(
            f"- multi-token labels, T={t}, concurrency {c}: engine_multilabel / engine "
            f"{_ratio(by_key, ('engine_multilabel', t, c), ('engine', t, c))} (requests/s)"
        )
    return "\n".join(lines)
