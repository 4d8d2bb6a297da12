"""Command line: `python -m cli client create NAME [--org SLUG]` prints the new client's key and secret once;
`python -m cli org create SLUG --name NAME` makes an organisation, `org update SLUG --brand ..` edits one,
`org list` lists them."""
from __future__ import annotations

import argparse
import sys

from core.admin.clients import (check_end_user_ip_header, create_client, list_clients, revoke_client,
                                set_end_user_ip_header, set_token_ttl)
from core.admin.organisations import (OrganisationRefused, UnknownOrganisation, create_organisation,
                                      get_organisation_by_slug, list_organisations)
from core.admin.tokens import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, MIN_TTL_SECONDS, check_token_ttl
from core.db.models import ApiClientCreate, OrganisationBase, OrganisationUpdate
from core.runtime import Runtime
from core.services.admin_actions import save_organisation
from core.settings import settings_or_exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli", description="OTP service administration")
    groups = parser.add_subparsers(dest="group", required=True)
    client = groups.add_parser("client", help="API clients").add_subparsers(dest="command", required=True)
    create = client.add_parser("create", help="create a client; its secret is printed once")
    create.add_argument("name")
    create.add_argument("--org", default="default", metavar="SLUG",
                        help="the organisation the client acts in (default: the default organisation)")
    create.add_argument("--permissions", default="otp:write", help="comma-separated (default: otp:write)")
    ttl_help = f"seconds its OAuth access tokens live, {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}"
    create.add_argument("--token-ttl", type=int, default=DEFAULT_TTL_SECONDS,
                        help=f"{ttl_help} (default {DEFAULT_TTL_SECONDS})")
    token_ttl = client.add_parser("token-ttl", help="set how long a client's new OAuth access tokens live")
    token_ttl.add_argument("id", type=int)
    token_ttl.add_argument("seconds", type=int, help=ttl_help)
    header_help = ("where the client's end users' addresses come from, for the per-address limit: a header the "
                   "client fills with its customer's IP (e.g. X-End-User-IP), or X-Forwarded-For when its "
                   "requests come from its end users (through OTP_TRUSTED_PROXIES); none (default): a backend, "
                   "no per-address count")
    create.add_argument("--end-user-ip-header", default=None, metavar="HEADER", help=header_help)
    update = client.add_parser("update", help="change a client's settings")
    update.add_argument("id", type=int)
    update.add_argument("--end-user-ip-header", required=True, metavar="HEADER", help=header_help)
    revoke = client.add_parser("revoke", help="revoke a client by id")
    revoke.add_argument("id", type=int)
    client.add_parser("list", help="list clients (never their secrets), with their organisation")
    org = groups.add_parser("org", help="organisations").add_subparsers(dest="command", required=True)
    org_create = org.add_parser("create", help="create an organisation (default configuration, no gateways, "
                                               "no clients)")
    org_create.add_argument("slug", help="lower-case letters, digits and '-', e.g. acme-vn")
    org_create.add_argument("--name", required=True)
    org_create.add_argument("--brand", default=None, help="its {{ brand }} (default: OTP_BRAND)")
    org_create.add_argument("--timezone", default=None, help="where its day begins (default: OTP_TIMEZONE)")
    org_create.add_argument("--region", default=None, help="ISO region of its national numbers "
                                                           "(default: OTP_DEFAULT_REGION)")
    org_update = org.add_parser("update", help="change an organisation's name, brand, time zone or phone region "
                                               "(the slug stays); the API uses it within OTP_CACHE_SECONDS")
    org_update.add_argument("slug", help="the organisation to change")
    org_update.add_argument("--name", default=None)
    org_update.add_argument("--brand", default=None, help="its {{ brand }}; \"\" for OTP_BRAND again")
    org_update.add_argument("--timezone", default=None, help="where its day begins; \"\" for OTP_TIMEZONE again")
    org_update.add_argument("--region", default=None, help="ISO region of its national numbers; \"\" for "
                                                           "OTP_DEFAULT_REGION again")
    org.add_parser("list", help="list organisations")
    groups.add_parser("migrate", help="apply database migrations and seed the default configuration")
    args = parser.parse_args(argv)

    for name in ("token_ttl", "seconds"):  # refused before the database is opened, with the rule
        try:
            check_token_ttl(getattr(args, name, DEFAULT_TTL_SECONDS))
        except ValueError as exc:
            parser.error(str(exc))

    try:  # bad input is refused before the database is touched
        header = check_end_user_ip_header(getattr(args, "end_user_ip_header", None))
    except ValueError as exc:
        parser.error(f"--end-user-ip-header: {exc}")
    if args.group == "org" and args.command == "update" and all(
            getattr(args, name) is None for name in ("name", "brand", "timezone", "region")):
        parser.error("org update: say what to change: --name, --brand, --timezone or --region")
    runtime = Runtime(settings_or_exit())
    if args.group == "migrate":
        print("database is up to date")
        return 0
    if args.group == "org":
        return _org(args, runtime)
    with runtime.session() as session:
        if args.command == "create":
            name = args.name.strip()
            if not name or len(name) > 120:
                parser.error("NAME must be 1 to 120 characters")
            try:
                org_id = get_organisation_by_slug(session, args.org).id
            except UnknownOrganisation as exc:
                print(exc, file=sys.stderr)
                return 1
            made = create_client(session, client_create=ApiClientCreate(name=name, permissions=args.permissions,
                                                                        token_ttl_seconds=args.token_ttl,
                                                                        end_user_ip_header=header), org_id=org_id)
            print(f"id: {made.client.id}")
            if len(list_organisations(session)) > 1:  # one organisation: the output as before organisations
                print(f"organisation: {args.org.strip().lower()}")
            print(f"key: {made.key}")
            print(f"secret: {made.secret}")
            print(f"bearer: {made.bearer_token}")
            print("The secret is shown only now; store it safely.", file=sys.stderr)
        elif args.command == "revoke":
            if not revoke_client(session, client_id=args.id, org_id=None):
                print(f"no active client with id {args.id}", file=sys.stderr)
                return 1
            print(f"revoked client {args.id}")
        elif args.command == "token-ttl":
            if not set_token_ttl(session, client_id=args.id, seconds=args.seconds, org_id=None):
                print(f"no active client with id {args.id}", file=sys.stderr)
                return 1
            print(f"client {args.id}: new access tokens live {args.seconds} s")
        elif args.command == "update":
            try:
                stored = set_end_user_ip_header(session, client_id=args.id, header=header, org_id=None)
            except LookupError as exc:
                print(exc, file=sys.stderr)
                return 1
            print(f"client {args.id}: end users' addresses from {stored or 'nowhere (a backend)'}")
        else:
            slugs = {o.id: o.slug for o in list_organisations(session)}
            for row in list_clients(session, org_id=None):
                state = "revoked" if row.revoked_at else "active"
                org = f"\torg {slugs.get(row.org_id, row.org_id)}" if len(slugs) > 1 else ""
                print(f"{row.id}\t{row.key}\t{row.name}\t{row.permissions}\t{state}\t"
                      f"{row.end_user_ip_header or '-'}\ttoken ttl {row.token_ttl_seconds}s{org}")
    return 0


def _refused(exc: OrganisationRefused) -> int:
    for problems in exc.problems.values():
        for problem in problems:
            print(problem, file=sys.stderr)
    return 1


def _org(args: argparse.Namespace, runtime: Runtime) -> int:
    if args.command == "update":
        return _org_update(args, runtime)
    with runtime.session() as session:
        if args.command == "create":
            try:  # built unchecked: core reports every problem (an over-long name too) by field, in words
                made = create_organisation(session, actor="cli", fields=OrganisationBase.model_construct(
                    slug=args.slug, name=args.name, brand=args.brand, timezone=args.timezone,
                    phone_region=args.region))
            except OrganisationRefused as exc:
                return _refused(exc)
            print(f"id: {made.id}")
            print(f"slug: {made.slug}")
            print(f"create its API clients with: python -m cli client create NAME --org {made.slug}")
            return 0
        for row in list_organisations(session):
            print(f"{row.id}\t{row.slug}\t{row.name}\tbrand {row.brand if row.brand is not None else '(OTP_BRAND)'}"
                  f"\ttimezone {row.timezone or '(OTP_TIMEZONE)'}\tregion {row.phone_region or '(OTP_DEFAULT_REGION)'}")
    return 0



def _org_update(args: argparse.Namespace, runtime: Runtime) -> int:
    given = {field: value for field, value in (("name", args.name), ("brand", args.brand),
                                               ("timezone", args.timezone), ("phone_region", args.region))
             if value is not None}
    try:
        with runtime.session() as session:
            org_id = get_organisation_by_slug(session, args.slug).id
        edited = save_organisation(runtime, actor="cli", org_id=org_id, fields=OrganisationUpdate(**given))
    except UnknownOrganisation as exc:
        print(exc, file=sys.stderr)
        return 1
    except OrganisationRefused as exc:
        return _refused(exc)
    if not edited.changes:
        print(f"{edited.organisation.slug}: nothing changed")
    for field, (before, after) in edited.changes.items():
        print(f"{field}: {before if before is not None else '(service setting)'} -> "
              f"{after if after is not None else '(service setting)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
