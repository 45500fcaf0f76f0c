"""The `promptbank` command: serve the API, and manage keys without a running server.

promptbank serve [--host 127.0.0.1] [--port 8000] [--allow-unauthenticated]
promptbank keys create (--admin | --tenant T --scopes read,infer) [--name N]
promptbank keys list [--tenant T]
promptbank keys revoke ID
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

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

    uvicorn.run("app.main:app", host=args.host, port=args.port)
    return 0


def keys_command(args: argparse.Namespace) -> int:
    sessions = _sessions(Settings())
    with sessions.begin() as session:
        audit.act_as(session, "cli")
        try:
            if args.action == "create":
                scopes = list(keys.SCOPES) if args.admin else [s.strip() for s in (args.scopes or "").split(",") if s]
                row, key = keys.create_key(session, tenant=args.tenant, scopes=scopes, name=args.name)
                print(key)
                print(
                    f"key {row.id} for tenant {row.tenant}, scopes {','.join(row.scopes)}; shown only now",
                    file=sys.stderr,
                )
            elif args.action == "list":
                for row in keys.list_keys(session, tenant=args.tenant, limit=1000, offset=0):
                    state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                    print(f"{row.id}\t{row.prefix}…\t{row.tenant}\t{','.join(row.scopes)}\t{state}\t{row.name or ''}")
            else:
                keys.revoke_key(session, args.id)
                print(f"key {args.id} revoked", file=sys.stderr)
        except AppError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="promptbank", description="Many NLP tasks on one frozen language model.")
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve the API (and, unless PROMPTBANK_RUN_WORKER=false, a worker)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--allow-unauthenticated", action="store_true", help="serve other hosts with no keys at all")
    run.set_defaults(func=serve)
    key = commands.add_parser("keys", help="create, list or revoke API keys")
    actions = key.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--admin", action="store_true", help="every scope, read, infer, train and admin")
    create.add_argument("--tenant", default=DEFAULT_TENANT)
    create.add_argument("--scopes", help="comma-separated: read,infer,train,admin")
    create.add_argument("--name")
    listing = actions.add_parser("list", help="every key: id, prefix, tenant, scopes, state")
    listing.add_argument("--tenant")
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", type=int)
    key.set_defaults(func=keys_command)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "keys" and args.action == "create" and not args.admin and not args.scopes:
        parser().error("keys create needs --admin or --scopes")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
