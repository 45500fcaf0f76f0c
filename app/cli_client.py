"""The `promptbank` commands that talk to a running service over HTTP (its URL: --url or PROMPTBANK_URL; its key:
--key or PROMPTBANK_KEY). Tables for people, --json for scripts; a refusal prints the server's message and exits 1.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

DEFAULT_URL = "http://127.0.0.1:8000"


class CliError(Exception):
    """What the command line prints as `error: ...` before exiting 1."""


@dataclass
class Client:
    url: str
    key: str | None
    as_json: bool
    timeout: float = 300.0

    def _http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.Client(base_url=self.url.rstrip("/"), headers=headers, timeout=self.timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON (or bytes) of a successful answer; CliError with the server's message otherwise."""
        try:
            with self._http() as http:
                response = http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.url}: {exc} (set --url or PROMPTBANK_URL)") from exc
        return _answer(response)

    def stream(self, path: str) -> Any:
        """Server-sent events of path, as (event, data) pairs."""
        try:
            with self._http() as http, http.stream("GET", path, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    _answer(response)
                event: dict[str, str] = {}
                for line in response.iter_lines():
                    if not line:
                        if "data" in event:
                            yield event.get("event", "message"), json.loads(event["data"])
                        event = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        event[name] = value[1:] if value.startswith(" ") else value
        except httpx.HTTPError as exc:
            raise CliError(f"the stream from {self.url} broke: {exc}") from exc

    def show(self, data: Any, columns: list[str] | None = None, title: str | None = None) -> None:
        """data as JSON (--json), or as a table of `columns` (a list of rows) or of fields (one object)."""
        if self.as_json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            return
        console = Console()
        rows = data if isinstance(data, list) else [data]
        if columns is None:
            table = Table("field", "value", title=title)
            for name, value in (rows[0] if rows else {}).items():
                table.add_row(name, _cell(value))
        else:
            table = Table(*columns, title=title)
            for row in rows:
                table.add_row(*(_cell(row.get(column)) for column in columns))
        console.print(table)


def _answer(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message, code = error["message"], error["code"]
        except (ValueError, KeyError, TypeError):
            message, code = response.text[:500] or response.reason_phrase, "http_error"
            error = {}
        lines = [
            f"\n  line {d['line']}: {d['message']}"
            for d in (error.get("details") if isinstance(error.get("details"), list) else [])
            if isinstance(d, dict) and "line" in d
        ]
        raise CliError(f"{message} ({response.status_code} {code})" + "".join(lines[:50]))
    if response.status_code == 204:
        return None
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.content


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def client(ctx: typer.Context) -> Client:
    return ctx.obj  # type: ignore[no-any-return]


# --- datasets --------------------------------------------------------------------------------------------

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


# --- tasks -----------------------------------------------------------------------------------------------

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


# --- train, jobs ------------------------------------------------------------------------------------------

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


# --- infer -----------------------------------------------------------------------------------------------


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


# --- prompts ---------------------------------------------------------------------------------------------

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
