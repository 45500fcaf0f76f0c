"""The promptbank command against a live test server: upload, create, train --follow, infer, prompts; tables for
people, --json for scripts, and the server's message with exit 1 on a refusal."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from app.cli import main
from tests.api.helpers import toy_examples
from tests.live_server import ADMIN_KEY


@pytest.fixture
def server(live_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PROMPTBANK_URL", live_url)
    monkeypatch.setenv("PROMPTBANK_KEY", ADMIN_KEY)
    monkeypatch.setenv("COLUMNS", "200")  # rich's tables: wide enough not to wrap a cell
    return live_url


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main(["--json", *argv]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_the_main_flow_from_the_command_line(server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(example) + "\n" for example in toy_examples(24)))
    dataset = _json(capsys, "datasets", "upload", str(data))
    assert dataset["name"] == "reviews" and dataset["num_examples"] == 24  # type: ignore[index]
    task = _json(
        capsys,
        "tasks",
        "create",
        "sentiment",
        "--labels",
        "positive,negative",
        "--template",
        "Review: {input}\nSentiment:",
    )
    assert task["status"] == "untrained"  # type: ignore[index]

    assert (
        main(
            [
                "train",
                "sentiment",
                str(dataset["id"]),
                "--steps",
                "6",
                "--tokens",
                "4",
                "--set",
                "eval_every=3",
                "--follow",
            ]
        )
        == 0
    )  # type: ignore[index]
    out = capsys.readouterr()
    assert "succeeded, prompt" in out.out
    assert "6/6" in out.err and "loss" in out.err  # the bar's last state

    assert (
        main(["--json", "train", "sentiment", str(dataset["id"]), "--steps", "4", "--set", "warmup_steps=0", "-f"]) == 0
    )  # type: ignore[index]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["metric"]["step"] for line in lines if "metric" in line][-1] == 4
    assert lines[-1]["job"]["status"] == "succeeded" and lines[-1]["job"]["hyperparameters"]["warmup_steps"] == 0

    assert main(["infer", "sentiment", "a good film", "bad"]) == 0
    table = capsys.readouterr().out
    assert "a good film" in table and ("positive" in table or "negative" in table) and "probability" in table
    answer = _json(capsys, "infer", "sentiment", "fine")
    assert answer["outputs"][0]["label"] in ("positive", "negative")  # type: ignore[index]

    versions = _json(capsys, "prompts", "ls", "--task", "sentiment")
    assert [v["version"] for v in versions] == [1, 2]  # type: ignore[index]
    first = versions[0]["id"]  # type: ignore[index]
    assert main(["prompts", "ls", "--task", "sentiment"]) == 0
    table = capsys.readouterr().out
    assert "val score" in table and "val loss" in table and "best step" in table
    assert "best_val_loss" not in table and "{" not in table  # key figures, not the raw metrics JSON
    figures = versions[0]["metrics"]  # type: ignore[index]
    assert f"{figures['best_val_loss']:.4g}" in table and f"{figures['best_step']}/6" in table
    target = tmp_path / "adapter.zip"
    assert main(["prompts", "export", str(first), "-o", str(target)]) == 0
    assert "adapter_config.json" in " ".join(zipfile.ZipFile(target).namelist())
    imported = _json(capsys, "prompts", "import", str(target), "--task", "sentiment")
    assert imported["version"] == 3 and imported["active"]  # type: ignore[index]
    assert _json(capsys, "prompts", "activate", str(first))["active"]  # type: ignore[index]
    assert main(["prompts", "rm", str(imported["id"])]) == 0  # type: ignore[index]
    assert main(["tasks", "ls"]) == 0
    assert "sentiment" in capsys.readouterr().out


def test_refusals_exit_1_with_the_servers_message(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["infer", "nope", "hello"]) == 1
    assert "error: no task with id or name 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "b"}\n{"input": "c"}\nnot json\n')
    assert main(["datasets", "upload", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "dataset_invalid" in err and "line 2:" in err and "line 3:" in err
    assert main(["train", "sentiment", "1", "--set", "oops"]) == 1
    assert "name=value" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:9", "tasks", "ls"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["--key", "pb_wrong", "tasks", "ls"]) == 1
    assert "401" in capsys.readouterr().err
