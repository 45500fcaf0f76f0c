"""`promptbank infer`: classify or generate with a task's active prompt, one table row per input."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from app.cli_client.client import client


def infer(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="the task's name or id")],
    texts: Annotated[list[str], typer.Argument(help="one or more inputs")],
    max_new_tokens: Annotated[int | None, typer.Option(help="generation tasks")] = None,
) -> None:
    """Classify or generate with the task's active prompt."""
    body: dict[str, Any] = {"task": task, "inputs": texts}
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    api = client(ctx)
    answer = api.call("POST", "/v1/infer", json=body)
    if api.as_json:
        api.show(answer)
        return
    rows = []
    for text, output in zip(texts, answer["outputs"], strict=True):
        if "label" in output:
            best = output["scores"][output["label"]]
            rows.append({"input": text, "output": output["label"], "probability": best})
        else:
            rows.append({"input": text, "output": output["text"]})
    columns = ["input", "output"] + (["probability"] if rows and "probability" in rows[0] else [])
    api.show(rows, columns, title=f"{answer['task']} (prompt {answer['prompt_id']})")
