"""Training from the command line: `promptbank train` (queue a job, --follow it with a live progress bar) and
`promptbank jobs` (ls, show, follow, cancel)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli_client.client import Client, CliError, client

JOB_COLUMNS = ["id", "type", "task_name", "status", "progress", "result_prompt_id", "error"]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def train(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="the task's name or id")],
    dataset: Annotated[int, typer.Argument(help="the dataset's id")],
    method: Annotated[str | None, typer.Option(help="prompt, deep, around, ... (see the README)")] = None,
    steps: Annotated[int | None, typer.Option(help="optimizer steps")] = None,
    tokens: Annotated[int | None, typer.Option("--tokens", help="num_virtual_tokens")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="learning_rate")] = None,
    batch_size: Annotated[int | None, typer.Option(help="batch_size")] = None,
    validation: Annotated[int | None, typer.Option(help="a validation dataset's id")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="any hyperparameter: name=value (JSON)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="show a live progress bar until the job ends")] = False,
) -> None:
    """Queue a train job for TASK on DATASET; with --follow, watch it to the end (exit 1 unless it succeeds)."""
    hyper: dict[str, Any] = {}
    for name, value in (
        ("method", method),
        ("steps", steps),
        ("num_virtual_tokens", tokens),
        ("learning_rate", lr),
        ("batch_size", batch_size),
    ):
        if value is not None:
            hyper[name] = value
    for item in set_ or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--set {item!r}: write name=value, e.g. --set warmup_steps=0")
        hyper[name.strip()] = _value(value)
    body: dict[str, Any] = {"type": "train", "task": task, "dataset_id": dataset, "hyperparameters": hyper}
    if validation is not None:
        body["validation_dataset_id"] = validation
    api = client(ctx)
    job = api.call("POST", "/v1/jobs", json=body)
    if not follow:
        api.show(job, JOB_COLUMNS)
        return
    typer.echo(f"job {job['id']} queued", err=True)
    raise typer.Exit(_follow(api, job["id"]))


def _follow(api: Client, job_id: int) -> int:
    """A progress bar (steps, loss, validation score) from the job's event stream; the exit code."""
    final: dict[str, Any] | None = None
    loss = score = None
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[figures]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=api.as_json) as bar:
        shown = bar.add_task(f"job {job_id}", total=None, figures="queued")
        for event, data in api.stream(f"/v1/jobs/{job_id}/stream"):
            if event == "job":
                progress = data.get("progress") or {}
                total = progress.get("total_steps") or None
                bar.update(shown, total=total, completed=progress.get("step") or 0)
                if data["status"] == "queued":
                    bar.update(shown, figures="queued")
            elif event == "metric":
                loss = data["loss"] if data["loss"] is not None else loss
                score = data["val_score"] if data["val_score"] is not None else score
                figures = "" if loss is None else f"loss {loss:.4f}"
                if score is not None:
                    figures += f"  val {score:.3f}"
                bar.update(shown, completed=data["step"], figures=figures)
                if api.as_json:
                    sys.stdout.write(json.dumps({"metric": data}) + "\n")
            elif event == "end":
                final = data
            elif event == "error":
                raise CliError(data["error"]["message"])
    if final is None:
        raise CliError(f"the stream of job {job_id} ended before the job did; run it again to resume")
    if api.as_json:
        sys.stdout.write(json.dumps({"job": final}) + "\n")
    else:
        tail = f", prompt {final['result_prompt_id']}" if final.get("result_prompt_id") else ""
        typer.echo(f"job {job_id} {final['status']}{tail}" + (f": {final['error']}" if final.get("error") else ""))
    return 0 if final["status"] == "succeeded" else 1


jobs = typer.Typer(help="List, show, follow and cancel jobs.", no_args_is_help=True)


@jobs.command("ls")
def jobs_ls(ctx: typer.Context, task: Annotated[str | None, typer.Option(help="only this task's")] = None) -> None:
    """List jobs."""
    api = client(ctx)
    api.show(api.call("GET", "/v1/jobs", params={"task": task} if task else None), JOB_COLUMNS)


@jobs.command("show")
def jobs_show(ctx: typer.Context, job_id: int) -> None:
    """One job with its progress."""
    api = client(ctx)
    api.show(api.call("GET", f"/v1/jobs/{job_id}"))


@jobs.command("follow")
def jobs_follow(ctx: typer.Context, job_id: int) -> None:
    """Watch a job to its end with a progress bar (exit 1 unless it succeeds)."""
    raise typer.Exit(_follow(client(ctx), job_id))


@jobs.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: int) -> None:
    """Cancel a queued job, or a running one at its next step."""
    api = client(ctx)
    api.show(api.call("POST", f"/v1/jobs/{job_id}/cancel"), JOB_COLUMNS)
