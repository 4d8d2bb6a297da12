"""Command line: `python -m core.cli client create NAME` prints the new client's key and secret once."""
from __future__ import annotations

import argparse
import sys

from core.clients import create_client, list_clients, revoke_client, set_token_ttl
from core.config import settings_or_exit
from core.models import ApiClientCreate
from core.runtime import Runtime
from core.tokens import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, MIN_TTL_SECONDS, check_token_ttl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.cli", description="OTP service administration")
    groups = parser.add_subparsers(dest="group", required=True)
    client = groups.add_parser("client", help="API clients").add_subparsers(dest="command", required=True)
    create = client.add_parser("create", help="create a client; its secret is printed once")
    create.add_argument("name")
    create.add_argument("--permissions", default="otp:write", help="comma-separated (default: otp:write)")
    ttl_help = f"seconds its OAuth access tokens live, {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}"
    create.add_argument("--token-ttl", type=int, default=DEFAULT_TTL_SECONDS,
                        help=f"{ttl_help} (default {DEFAULT_TTL_SECONDS})")
    token_ttl = client.add_parser("token-ttl", help="set how long a client's new OAuth access tokens live")
    token_ttl.add_argument("id", type=int)
    token_ttl.add_argument("seconds", type=int, help=ttl_help)
    revoke = client.add_parser("revoke", help="revoke a client by id")
    revoke.add_argument("id", type=int)
    client.add_parser("list", help="list clients (never their secrets)")
    groups.add_parser("migrate", help="apply database migrations and seed the default configuration")
    args = parser.parse_args(argv)

    for name in ("token_ttl", "seconds"):  # refused before the database is opened, with the rule
        try:
            check_token_ttl(getattr(args, name, DEFAULT_TTL_SECONDS))
        except ValueError as exc:
            parser.error(str(exc))

    runtime = Runtime(settings_or_exit())
    if args.group == "migrate":
        print("database is up to date")
        return 0
    with runtime.session() as session:
        if args.command == "create":
            name = args.name.strip()
            if not name or len(name) > 120:
                parser.error("NAME must be 1 to 120 characters")
            made = create_client(session, client_create=ApiClientCreate(name=name, permissions=args.permissions,
                                                                        token_ttl_seconds=args.token_ttl))
            print(f"id: {made.client.id}")
            print(f"key: {made.key}")
            print(f"secret: {made.secret}")
            print(f"bearer: {made.bearer_token}")
            print("The secret is shown only now; store it safely.", file=sys.stderr)
        elif args.command == "revoke":
            if not revoke_client(session, client_id=args.id):
                print(f"no active client with id {args.id}", file=sys.stderr)
                return 1
            print(f"revoked client {args.id}")
        elif args.command == "token-ttl":
            if not set_token_ttl(session, client_id=args.id, seconds=args.seconds):
                print(f"no active client with id {args.id}", file=sys.stderr)
                return 1
            print(f"client {args.id}: new access tokens live {args.seconds} s")
        else:
            for row in list_clients(session):
                state = "revoked" if row.revoked_at else "active"
                print(f"{row.id}\t{row.key}\t{row.name}\t{row.permissions}\t{state}\ttoken ttl {row.token_ttl_seconds}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
