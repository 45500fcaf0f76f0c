"""The `promptbank` command (Typer): serve the API, run a worker, migrate, manage keys without a running server,
and talk to a running service (app/cli_client/: datasets, tasks, train --follow, infer, jobs, prompts).

promptbank serve [--host 127.0.0.1] [--port 8000] [--allow-unauthenticated]
promptbank keys create (--admin | --tenant T --scopes read,infer) [--name N]
promptbank [--url URL] [--key KEY] [--json] train TASK DATASET --steps 30 --follow
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Annotated

import click
import typer
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from app import cli_client
from app.api.auth import is_loopback
from app.config import Settings
from app.db.models import DEFAULT_TENANT
from app.db.session import make_engine, make_session_factory
from app.errors import AppError
from app.migrate import upgrade
from app.services import audit, keys
from app.threads import set_wait_policy


def _sessions(settings: Settings) -> sessionmaker[Session]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    if settings.auto_migrate:
        upgrade(url)
    return make_session_factory(make_engine(url))


def auth_configured(settings: Settings) -> bool:
    """Whether the service will ask for keys: PROMPTBANK_ADMIN_KEY is set, or a key exists in the database."""
    if settings.admin_key is not None:
        return True
    with _sessions(settings)() as session:
        return keys.any_created(session)


def serve(args: argparse.Namespace) -> int:
    settings = Settings()
    allow = args.allow_unauthenticated or settings.allow_unauthenticated
    if not is_loopback(args.host) and not allow and not auth_configured(settings):
        print(
            f"refusing to serve on {args.host} without keys: anyone who reaches it could read, train and delete. "
            "Set PROMPTBANK_ADMIN_KEY (or run `promptbank keys create --admin`), or pass --allow-unauthenticated "
            "if this network is yours alone.",
            file=sys.stderr,
        )
        return 2
    if allow:
        os.environ["PROMPTBANK_ALLOW_UNAUTHENTICATED"] = "true"  # read by the app's Settings at import
    set_wait_policy(settings.omp_wait_policy, "api")  # before the app (and PyTorch) is imported
    import uvicorn

    # one access line per request, the app's own (promptbank.access, with the request id), not uvicorn's as well
    uvicorn.run("app.main:app", host=args.host, port=args.port, access_log=False)
    return 0


def keys_command(args: argparse.Namespace) -> int:
    sessions = _sessions(Settings())
    with sessions.begin() as session:
        audit.act_as(session, "cli")
        try:
            if args.action == "create":
                scopes = list(keys.SCOPES) if args.admin else [s.strip() for s in (args.scopes or "").split(",") if s]
                row, key = keys.create_key(
                    session, tenant=args.tenant, scopes=scopes, name=args.name, operator=args.admin
                )
                print(key)
                role = "the operator's key (every tenant's keys and audit log), " if row.operator else ""
                print(
                    f"key {row.id}: {role}tenant {row.tenant}, scopes {','.join(row.scopes)}; shown only now",
                    file=sys.stderr,
                )
            elif args.action == "list":
                for row in keys.list_keys(session, tenant=args.tenant, limit=1000, offset=0):
                    state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                    granted = ",".join(row.scopes) + (" (operator)" if row.operator else "")
                    print(f"{row.id}\t{row.prefix}…\t{row.tenant}\t{granted}\t{state}\t{row.name or ''}")
            else:
                keys.revoke_key(session, args.id)
                print(f"key {args.id} revoked", file=sys.stderr)
        except AppError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
    return 0


cli = typer.Typer(
    name="promptbank",
    help="Many NLP tasks on one frozen language model. Commands other than serve, worker, migrate and keys talk to "
    "a running service (--url or PROMPTBANK_URL).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@cli.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="PROMPTBANK_URL", help="the service")] = cli_client.DEFAULT_URL,
    key: Annotated[str | None, typer.Option(envvar="PROMPTBANK_KEY", help="an API key, if the service asks")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts instead of tables")] = False,
) -> None:
    ctx.obj = cli_client.Client(url, key, as_json)


@cli.command("serve")
def serve_command(
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_unauthenticated: Annotated[bool, typer.Option(help="serve other hosts with no keys at all")] = False,
) -> None:
    """Serve the API (and, unless PROMPTBANK_RUN_WORKER=false, a training worker inside it)."""
    raise typer.Exit(serve(argparse.Namespace(host=host, port=port, allow_unauthenticated=allow_unauthenticated)))


@cli.command("worker")
def worker_command() -> None:
    """Run a standalone training worker until SIGTERM or Ctrl-C (as `python -m workers`)."""
    set_wait_policy(Settings().omp_wait_policy, "worker")  # before PyTorch is imported: OpenMP reads it once
    from workers.cli import main as run_worker

    run_worker()


@cli.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the database schema (PROMPTBANK_DATABASE_URL, or SQLite in the data directory)."""
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    typer.echo("database at the latest schema", err=True)


keys_cli = typer.Typer(
    help="Create, list or revoke API keys (in the database, no server needed).", no_args_is_help=True
)


@keys_cli.command("create")
def keys_create(
    admin: Annotated[
        bool,
        typer.Option("--admin", help="the operator's key: every scope, and the keys and audit log of every tenant"),
    ] = False,
    tenant: str = DEFAULT_TENANT,
    scopes: Annotated[str | None, typer.Option(help="comma-separated: read,infer,train,admin")] = None,
    name: str | None = None,
) -> None:
    """Create a key and print it (shown only once)."""
    if not admin and not scopes:
        raise typer.BadParameter("keys create needs --admin or --scopes")
    raise typer.Exit(
        keys_command(argparse.Namespace(action="create", admin=admin, tenant=tenant, scopes=scopes, name=name))
    )


@keys_cli.command("list")
def keys_list(tenant: str | None = None) -> None:
    """Every key: id, prefix, tenant, scopes, state."""
    raise typer.Exit(keys_command(argparse.Namespace(action="list", tenant=tenant)))


@keys_cli.command("revoke")
def keys_revoke(key_id: int) -> None:
    """Revoke a key by id."""
    raise typer.Exit(keys_command(argparse.Namespace(action="revoke", id=key_id)))


cli.add_typer(keys_cli, name="keys")
cli.add_typer(cli_client.datasets, name="datasets")
cli.add_typer(cli_client.tasks, name="tasks")
cli.add_typer(cli_client.jobs, name="jobs")
cli.add_typer(cli_client.prompts, name="prompts")
cli.command("train")(cli_client.train)
cli.command("infer")(cli_client.infer)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; its exit code (a refusal by the server: its message on stderr and 1)."""
    try:
        result = cli(args=list(argv) if argv is not None else None, prog_name="promptbank", standalone_mode=False)
    except cli_client.CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except ValidationError as exc:  # a setting refused (input values are hidden: they may be secrets)
        for error in exc.errors(include_url=False):
            name = "PROMPTBANK_" + "_".join(str(part) for part in error["loc"]).upper()
            typer.echo(f"error: {name}: {error['msg'].removeprefix('Value error, ')}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except click.exceptions.Abort:
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
