"""`promptbank prompts`: list, delete, activate, export and import prompt versions, shown by their key figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli_client.client import Client, client

prompts = typer.Typer(help="List, delete, activate, export and import prompt versions.", no_args_is_help=True)
PROMPT_COLUMNS = ["id", "task", "version", "active", "method", "tokens", "val score", "val loss", "best step", "size"]


def _prompt_figures(version: dict[str, Any]) -> dict[str, Any]:
    """A version's key figures, one table row (--json prints every field, all metrics included)."""
    metrics = version.get("metrics") or {}
    best, steps = metrics.get("best_step"), metrics.get("steps")
    return {
        **{name: version.get(name) for name in ("id", "task", "version", "active", "method")},
        "tokens": version.get("num_virtual_tokens"),
        "val score": metrics.get("best_val_accuracy"),
        "val loss": metrics.get("best_val_loss"),
        "best step": f"{best}/{steps}" if best is not None and steps else None,
        "size": f"{version.get('size_bytes', 0) / 1024:.1f} KB",
    }


def show_prompts(api: Client, data: Any) -> None:
    """Prompt versions: their key figures as a table, or everything as JSON."""
    if api.as_json:
        api.show(data)
    else:
        api.show([_prompt_figures(v) for v in (data if isinstance(data, list) else [data])], PROMPT_COLUMNS)


@prompts.command("ls")
def prompts_ls(ctx: typer.Context, task: Annotated[str | None, typer.Option(help="only this task's")] = None) -> None:
    """List prompt versions."""
    api = client(ctx)
    show_prompts(api, api.call("GET", "/v1/prompts", params={"task": task} if task else None))


@prompts.command("rm")
def prompts_rm(ctx: typer.Context, prompt_id: int) -> None:
    """Delete a version (deleting the active one falls back to the previous)."""
    client(ctx).call("DELETE", f"/v1/prompts/{prompt_id}")
    typer.echo(f"prompt {prompt_id} deleted", err=True)


@prompts.command("activate")
def prompts_activate(ctx: typer.Context, prompt_id: int) -> None:
    """Serve this version of its task."""
    api = client(ctx)
    show_prompts(api, api.call("POST", f"/v1/prompts/{prompt_id}/activate"))


@prompts.command("export")
def prompts_export(
    ctx: typer.Context,
    prompt_id: int,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="where to write (default prompt-ID.zip)")
    ] = None,
    format_: Annotated[str, typer.Option("--format", help="peft (a zip) or safetensors")] = "peft",
) -> None:
    """Download a version as a PEFT adapter zip (or the stored safetensors)."""
    data = client(ctx).call("GET", f"/v1/prompts/{prompt_id}/export", params={"format": format_})
    path = output or Path(f"prompt-{prompt_id}.{'zip' if format_ == 'peft' else 'safetensors'}")
    path.write_bytes(data)
    typer.echo(f"wrote {path} ({len(data)} bytes)", err=True)


@prompts.command("import")
def prompts_import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a PEFT adapter zip")],
    task: Annotated[str, typer.Option(help="the task it becomes a version of")],
) -> None:
    """Store a PEFT adapter as the task's next, active version."""
    api = client(ctx)
    with file.open("rb") as handle:
        created = api.call("POST", "/v1/prompts/import", data={"task": task}, files={"file": (file.name, handle)})
    show_prompts(api, created)
