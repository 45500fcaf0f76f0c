"""bench.transfer's meta part resumes from its state folder: added inits train alone, stored ones are read back."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.engine.core.model import FrozenModel
from bench import transfer_meta
from bench.transfer_multitask import multitask_steps


def _args(state: Path, inits: list[str]) -> argparse.Namespace:
    return argparse.Namespace(
        **{"tokens": 2, "meta_tasks": 3, "meta_examples": 16, "held_out": 1, "orders": ["first"], "outer_steps": 1},
        **{"inner_steps": 1, "inner_lr": 0.01, "outer_lr": 0.01, "meta_batch": 2, "support": 4, "query": 4},
        **{"donors": 0, "shots": [4], "steps": 2, "report_at": [2], "eval_every": 1, "test_size": 8, "seeds": 1},
        **{"inits": inits, "multitask_steps": 2, "state": str(state)},
    )


def test_a_run_with_an_added_init_trains_only_that_init_and_reports_it_beside_the_stored_ones(
    frozen: FrozenModel, tmp_path: Path
) -> None:
    first = transfer_meta.run(frozen, _args(tmp_path, ["meta_first", "text"]), lambda message: None)
    logged: list[str] = []
    second = transfer_meta.run(frozen, _args(tmp_path, ["meta_first", "multitask", "text"]), logged.append)

    assert "1 of 3 (task, seed, k, init) to train, the rest read back" in logged
    assert [r["init"] for r in second["few_shot"]] == ["meta_first", "multitask", "text"]
    stored = {r["init"]: r for r in second["few_shot"]}
    assert [stored["meta_first"], stored["text"]] == first["few_shot"]
    lines = [json.loads(line) for line in (tmp_path / "few_shot.jsonl").read_text().splitlines()]
    assert [[r["init"] for r in line["records"]] for line in lines] == [["meta_first", "text"], ["multitask"]]
    assert second["multitask"]["steps"] == 2 and second["multitask"]["examples"] == 3 * 16

    logged.clear()
    third = transfer_meta.run(frozen, _args(tmp_path, ["meta_first", "multitask", "text"]), logged.append)
    assert "0 of 3 (task, seed, k, init) to train, the rest read back" in logged
    assert "multi-task start read back from " + str(tmp_path) in logged
    assert third["few_shot"] == second["few_shot"]


def test_the_multitask_start_sees_as_many_examples_as_a_meta_init_job_draws() -> None:
    defaults = argparse.Namespace(outer_steps=60, meta_batch=4, inner_steps=3, support=8, query=8, multitask_steps=0)
    assert multitask_steps(defaults) == 60 * 4 * (8 + 8) // 8 == 480
