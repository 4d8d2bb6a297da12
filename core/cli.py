"""Command line: `python -m core.cli client create NAME` prints the new client's key and secret once."""
from __future__ import annotations

import argparse
import sys

from core.config import settings_or_exit
from core.clients import create_client, list_clients, revoke_client
from core.models import ApiClientCreate
from core.runtime import Runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.cli", description="OTP service administration")
    groups = parser.add_subparsers(dest="group", required=True)
    client = groups.add_parser("client", help="API clients").add_subparsers(dest="command", required=True)
    create = client.add_parser("create", help="create a client; its secret is printed once")
    create.add_argument("name")
    create.add_argument("--permissions", default="otp:write", help="comma-separated (default: otp:write)")
    revoke = client.add_parser("revoke", help="revoke a client by id")
    revoke.add_argument("id", type=int)
    client.add_parser("list", help="list clients (never their secrets)")
    groups.add_parser("migrate", help="apply database migrations and seed the default configuration")
    args = parser.parse_args(argv)

    runtime = Runtime(settings_or_exit())
    if args.group == "migrate":
        print("database is up to date")
        return 0
    with runtime.session() as session:
        if args.command == "create":
            name = args.name.strip()
            if not name or len(name) > 120:
                parser.error("NAME must be 1 to 120 characters")
            made = create_client(session, client_create=ApiClientCreate(name=name, permissions=args.permissions))
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
        else:
            for row in list_clients(session):
                state = "revoked" if row.revoked_at else "active"
                print(f"{row.id}\t{row.key}\t{row.name}\t{row.permissions}\t{state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
