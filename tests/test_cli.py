"""The administration command: a client created from the shell can authenticate, its secret printed once."""
from __future__ import annotations

import os
import subprocess
import sys

from core.admin.clients import ClientAuthenticator
from core.db.engine import make_engine
from core.settings import ROOT


def cli(tmp_path, *args):
    env = {**os.environ, "OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}",
           "OTP_SECRET_KEY_FILE": str(tmp_path / "secret.key")}
    env.pop("OTP_SECRET_KEY", None)
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_client_create_prints_credentials_that_work(tmp_path):
    made = cli(tmp_path, "client", "create", "shop")
    assert made.returncode == 0, made.stderr
    lines = dict(line.split(": ", 1) for line in made.stdout.splitlines())
    key, secret = lines["key"], lines["secret"]
    assert key.startswith("ck_") and len(secret) >= 40
    assert oct((tmp_path / "secret.key").stat().st_mode & 0o777) == "0o600"

    engine = make_engine(f"sqlite:///{tmp_path / 'otp.db'}")
    auth = ClientAuthenticator(engine, ttl=60)
    identity = auth.verify(key, secret)
    assert identity is not None and identity.name == "shop" and "otp:write" in identity.permissions
    assert auth.verify(key, secret + "x") is None
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT secret_hash FROM api_client").scalar()
    assert secret not in stored and stored.startswith("$argon2")
    engine.dispose()

    listed = cli(tmp_path, "client", "list")
    assert key in listed.stdout and secret not in listed.stdout
    assert cli(tmp_path, "client", "revoke", lines["id"]).returncode == 0
    assert ClientAuthenticator(make_engine(f"sqlite:///{tmp_path / 'otp.db'}"), ttl=60).verify(key, secret) is None


def test_client_token_ttl_is_set_from_the_shell(tmp_path):
    made = cli(tmp_path, "client", "create", "shop", "--token-ttl", "900")
    assert made.returncode == 0, made.stderr
    client_id = dict(line.split(": ", 1) for line in made.stdout.splitlines())["id"]
    engine = make_engine(f"sqlite:///{tmp_path / 'otp.db'}")

    def stored() -> int:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT token_ttl_seconds FROM api_client WHERE id = ?",
                                        (int(client_id),)).scalar()

    assert stored() == 900
    assert cli(tmp_path, "client", "token-ttl", client_id, "120").returncode == 0
    assert stored() == 120 and "token ttl 120s" in cli(tmp_path, "client", "list").stdout
    for seconds in ("59", "86401", "-5"):  # refused with the rule, nothing changed
        refused = cli(tmp_path, "client", "token-ttl", client_id, seconds)
        assert refused.returncode == 2 and "60 to 86400" in refused.stderr, refused.stderr
    assert cli(tmp_path, "client", "create", "big", "--token-ttl", "0").returncode == 2
    assert stored() == 120
    missing = cli(tmp_path, "client", "token-ttl", "999", "300")
    assert missing.returncode == 1 and "no active client" in missing.stderr
    engine.dispose()


def test_client_end_user_ip_header_is_set_at_create_and_by_update(tmp_path):
    made = cli(tmp_path, "client", "create", "app", "--end-user-ip-header", "X-End-User-IP")
    assert made.returncode == 0, made.stderr
    lines = dict(line.split(": ", 1) for line in made.stdout.splitlines())
    key, secret = lines["key"], lines["secret"]

    def header() -> str | None:
        return ClientAuthenticator(make_engine(f"sqlite:///{tmp_path / 'otp.db'}"), ttl=60).verify(
            key, secret).end_user_ip_header

    assert header() == "X-End-User-IP" and "X-End-User-IP" in cli(tmp_path, "client", "list").stdout
    bad = cli(tmp_path, "client", "update", lines["id"], "--end-user-ip-header", "X End User")
    assert bad.returncode == 2 and "not an HTTP header name" in bad.stderr and header() == "X-End-User-IP"
    assert cli(tmp_path, "client", "update", lines["id"], "--end-user-ip-header", "X-Forwarded-For").returncode == 0
    assert header() == "X-Forwarded-For"
    assert cli(tmp_path, "client", "update", lines["id"], "--end-user-ip-header", "none").returncode == 0
    assert header() is None
    missing = cli(tmp_path, "client", "update", "999", "--end-user-ip-header", "X-End-User-IP")
    assert missing.returncode == 1 and "no active client with id 999" in missing.stderr


def test_organisations_from_the_shell(tmp_path):
    """org create / org list, and client create --org: the client authenticates as a client of that organisation."""
    assert "organisation" not in cli(tmp_path, "client", "create", "first").stdout  # one organisation: as before
    made = cli(tmp_path, "org", "create", "acme-vn", "--name", "Acme Vietnam", "--brand", "Acme",
               "--timezone", "Asia/Ho_Chi_Minh", "--region", "vn")
    assert made.returncode == 0, made.stderr
    org_id = int(dict(line.split(": ", 1) for line in made.stdout.splitlines() if ": " in line)["id"])
    assert org_id == 2
    for bad, problem in ((["Bad Slug", "--name", "x"], "lower-case"), (["acme-vn", "--name", "x"], "is taken"),
                         (["other", "--name", "x", "--timezone", "Mars/Olympus"], "unknown time zone"),
                         (["other", "--name", "x", "--region", "XX"], "unknown ISO region")):
        refused = cli(tmp_path, "org", "create", *bad)
        assert refused.returncode == 1 and problem in refused.stderr, (bad, refused.stderr)
    listed = cli(tmp_path, "org", "list").stdout.splitlines()
    assert listed[0].startswith("1\tdefault\tDefault\t") and "(OTP_TIMEZONE)" in listed[0]
    assert listed[1].startswith("2\tacme-vn\tAcme Vietnam\tbrand Acme\ttimezone Asia/Ho_Chi_Minh\tregion VN")
    assert len(listed) == 2  # the refused ones made nothing

    client = cli(tmp_path, "client", "create", "shop", "--org", "acme-vn")
    assert client.returncode == 0, client.stderr
    lines = dict(line.split(": ", 1) for line in client.stdout.splitlines())
    assert lines["organisation"] == "acme-vn"
    engine = make_engine(f"sqlite:///{tmp_path / 'otp.db'}")
    identity = ClientAuthenticator(engine, ttl=60).verify(lines["key"], lines["secret"])
    engine.dispose()
    assert identity is not None and identity.org_id == org_id
    unknown = cli(tmp_path, "client", "create", "shop", "--org", "nosuch")
    assert unknown.returncode == 1 and "no organisation with the slug 'nosuch'" in unknown.stderr
    rows = cli(tmp_path, "client", "list").stdout.splitlines()
    assert rows[0].endswith("\torg default") and rows[1].endswith("\torg acme-vn") and len(rows) == 2


def test_org_update_from_the_shell(tmp_path):
    """org update SLUG changes only what is named (an empty value: the service setting again), keeps the slug,
    is recorded as the command line's platform action; bad input exits 1 with the rule and changes nothing, an
    unknown slug exits 1, nothing to change is a usage error (2)."""
    assert cli(tmp_path, "org", "create", "acme-vn", "--name", "Acme Vietnam", "--brand", "Acme").returncode == 0

    def listed() -> str:
        return cli(tmp_path, "org", "list").stdout.splitlines()[1]

    done = cli(tmp_path, "org", "update", "acme-vn", "--timezone", "Asia/Ho_Chi_Minh", "--region", "vn")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["timezone: (service setting) -> Asia/Ho_Chi_Minh",
                                        "phone_region: (service setting) -> VN"]
    assert listed() == "2\tacme-vn\tAcme Vietnam\tbrand Acme\ttimezone Asia/Ho_Chi_Minh\tregion VN"
    assert cli(tmp_path, "org", "update", "ACME-VN", "--name", "Acme VN", "--brand", "").returncode == 0
    assert listed() == "2\tacme-vn\tAcme VN\tbrand (OTP_BRAND)\ttimezone Asia/Ho_Chi_Minh\tregion VN"
    assert cli(tmp_path, "org", "update", "acme-vn", "--name", "Acme VN").stdout == "acme-vn: nothing changed\n"
    for bad, problem in ((["--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
                         (["--region", "XX"], "unknown ISO region 'XX'"),
                         (["--name", " "], "the name must be 1 to 120"),
                         (["--name", "n" * 121], "the name must be 1 to 120"),
                         (["--brand", "b" * 101], "at most 100 characters"),
                         (["--brand", "Acme\r\nBcc: x@example.com"], "printable text on one line"),
                         (["--name", "Fine", "--timezone", "Nowhere/Else"], "unknown time zone")):
        refused = cli(tmp_path, "org", "update", "acme-vn", *bad)
        assert refused.returncode == 1 and problem in refused.stderr, (bad, refused.stderr)
        assert "Traceback" not in refused.stderr
    assert listed() == "2\tacme-vn\tAcme VN\tbrand (OTP_BRAND)\ttimezone Asia/Ho_Chi_Minh\tregion VN"
    unknown = cli(tmp_path, "org", "update", "nosuch", "--name", "x")
    assert unknown.returncode == 1 and "no organisation with the slug 'nosuch'" in unknown.stderr
    empty = cli(tmp_path, "org", "update", "acme-vn")
    assert empty.returncode == 2 and "say what to change" in empty.stderr
    engine = make_engine(f"sqlite:///{tmp_path / 'otp.db'}")
    with engine.connect() as conn:
        entries = conn.exec_driver_sql("SELECT org_id, actor, target FROM audit_log WHERE action = 'org.update'").all()
    engine.dispose()
    assert [tuple(e) for e in entries] == [(None, "cli", "org:acme-vn")] * 2
    # An over-long name at creation is refused in words too (it once stopped the command with a traceback).
    long = cli(tmp_path, "org", "create", "other", "--name", "n" * 121)
    assert long.returncode == 1 and long.stderr.strip() == "the name must be 1 to 120 printable characters on one line"
