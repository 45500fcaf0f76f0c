"""What a tenant keeps on the service before it trains: `promptbank datasets` (upload, ls, rm) and
`promptbank tasks` (create, ls, rm)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli_client.client import client

datasets = typer.Typer(help="Upload, list and delete datasets.", no_args_is_help=True)
DATASET_COLUMNS = ["id", "name", "num_examples", "labels", "labeled", "created_at"]


@datasets.command("upload")
def datasets_upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a .jsonl or .csv file")],
    name: Annotated[str | None, typer.Option(help="the dataset's name (default: the file's)")] = None,
) -> None:
    """Upload a JSONL or CSV dataset; every bad line is listed on refusal."""
    api = client(ctx)
    with file.open("rb") as handle:
        created = api.call(
            "POST", "/v1/datasets", files={"file": (file.name, handle)}, data={"name": name or file.stem}
        )
    api.show(created, DATASET_COLUMNS)


@datasets.command("ls")
def datasets_ls(ctx: typer.Context) -> None:
    """List datasets."""
    api = client(ctx)
    api.show(api.call("GET", "/v1/datasets"), DATASET_COLUMNS)


@datasets.command("rm")
def datasets_rm(ctx: typer.Context, dataset_id: int) -> None:
    """Delete a dataset."""
    client(ctx).call("DELETE", f"/v1/datasets/{dataset_id}")
    typer.echo(f"dataset {dataset_id} deleted", err=True)


tasks = typer.Typer(help="Create, list and delete tasks.", no_args_is_help=True)
TASK_COLUMNS = ["id", "name", "kind", "labels", "status", "active_prompt_id"]


@tasks.command("create")
def tasks_create(
    ctx: typer.Context,
    name: str,
    kind: Annotated[str, typer.Option(help="classification or generation")] = "classification",
    labels: Annotated[str | None, typer.Option(help="comma-separated labels (classification)")] = None,
    template: Annotated[str | None, typer.Option(help='how an input is rendered, with "{input}"')] = None,
) -> None:
    """Create an untrained task."""
    body: dict[str, Any] = {"name": name, "kind": kind}
    if labels is not None:
        body["labels"] = [label.strip() for label in labels.split(",") if label.strip()]
    if template is not None:
        body["template"] = template
    api = client(ctx)
    api.show(api.call("POST", "/v1/tasks", json=body), TASK_COLUMNS)


@tasks.command("ls")
def tasks_ls(ctx: typer.Context) -> None:
    """List tasks with their status and active version."""
    api = client(ctx)
    api.show(api.call("GET", "/v1/tasks"), TASK_COLUMNS)


@tasks.command("rm")
def tasks_rm(ctx: typer.Context, task: str) -> None:
    """Delete a task with its prompts and jobs."""
    client(ctx).call("DELETE", f"/v1/tasks/{task}")
    typer.echo(f"task {task} deleted", err=True)
