"""The console under Streamlit's AppTest: first start, sign-in, roles, templates with four eyes, test sends."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from console_ui.state import SESSION_KEY
from core.admin.staff import ConsoleSession, StaffIdentity, create_first_admin
from core.clock import utcnow
from core.enums import Action, Channel
from core.runtime import run
from core.services.generation import generate
from core.settings import ROOT
from tests.conftest import outbox
from tests.console_app import app, on_page, signed_in, texts
from tests.fakes import free_port
from tests.servers import stop, wait_until_up

PHONE = "+919955882233"


def test_first_start_asks_for_the_admin_then_signs_in(rt):
    at = app(rt).run()
    assert not at.exception
    assert at.title[0].value == "Welcome: create the first admin"
    at.text_input(key="setup_username").input("root")
    at.text_input(key="setup_password").input("short")
    at.text_input(key="setup_confirm").input("short")
    at.button(key="setup_submit").click().run()
    assert "at least 10 characters" in texts(at)
    at.text_input(key="setup_password").input("a long enough pass")
    at.text_input(key="setup_confirm").input("a long enough pass")
    at.button(key="setup_submit").click().run()
    assert not at.exception
    assert at.title[0].value == "OTP service status"
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT username, role FROM staff")).all() == [("root", "admin")]
        assert conn.execute(text("SELECT password_hash FROM staff")).scalar().startswith("$argon2")


def test_second_first_admin_is_refused(rt, team):
    from core.admin.staff import InvalidStaff
    with rt.session() as db, pytest.raises(InvalidStaff):
        create_first_admin(db, username="mallory", password="0123456789ab")


def test_login_says_nothing_about_which_part_was_wrong(rt, team):
    at = app(rt).run()
    assert at.title[0].value == "Sign in to the OTP console"
    for user, password in (("eve", "wrong-password"), ("nobody", "password-123")):
        at.text_input(key="login_username").input(user)
        at.text_input(key="login_password").input(password)
        at.button(key="login_submit").click().run()
        assert [e.value for e in at.error] == ["Unknown username or wrong password."]
        assert SESSION_KEY not in at.session_state
    at.text_input(key="login_username").input("eve")
    at.text_input(key="login_password").input("password-123")
    at.button(key="login_submit").click().run()
    assert at.title[0].value == "OTP service status"
    assert at.session_state[SESSION_KEY].identity.role == "editor"


def test_session_expires(rt, team):
    at = signed_in(rt, team["editor"])
    at.session_state[SESSION_KEY].expires_at = utcnow() - timedelta(seconds=1)
    at.run()
    assert at.title[0].value == "Sign in to the OTP console"
    assert "expired" in texts(at)


@pytest.mark.parametrize("role, allowed, refused", [
    ("viewer", [], ["pages/test_send.py", "pages/config.py", "pages/admin.py", "pages/outbox.py", "pages/audit.py"]),
    ("editor", ["pages/test_send.py", "pages/outbox.py"], ["pages/config.py", "pages/admin.py", "pages/audit.py"]),
    ("approver", ["pages/test_send.py", "pages/audit.py"], ["pages/config.py", "pages/admin.py"]),
    ("admin", ["pages/config.py", "pages/admin.py", "pages/audit.py", "pages/test_send.py"], []),
])
def test_each_role_reaches_only_its_pages(rt, team, role, allowed, refused):
    at = signed_in(rt, team[role]).run()
    assert not at.exception and at.title[0].value == "OTP service status"
    for page in ["pages/home.py", "pages/templates.py", *allowed]:
        at.switch_page(page).run()
        assert not at.exception, page
        assert "does not allow" not in texts(at), page
    for page in refused:
        # Not in this role's navigation, so there is no way to it...
        fresh = signed_in(rt, team[role]).run()
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            fresh.switch_page(page).run()
        # ...and the page itself refuses the role when run directly.
        direct = AppTest.from_file(str(ROOT / page), default_timeout=30)
        direct.session_state["runtime"] = rt
        direct.session_state[SESSION_KEY] = ConsoleSession.start(team[role], 30)
        direct.run()
        assert [e.value for e in direct.error] == ["Your role does not allow this page."], page


def test_viewer_sees_templates_read_only(rt, team):
    at = on_page(rt, team["viewer"], "pages/templates.py")
    assert not at.exception
    assert at.text_area(key="tpl_text_COUPON_SMS").disabled
    assert not [b for b in at.button if b.key in ("tpl_save", "tpl_submit")]


def test_two_placeholders_are_refused_for_approval_with_the_reason(rt, team):
    at = on_page(rt, team["editor"], "pages/templates.py")
    at.text_area(key="tpl_text_COUPON_SMS").input("{{ validation_code }} again {{ validation_code }}").run()
    assert any("exactly once; it has 2" in e.value for e in at.error)  # live check, before submitting
    at.button(key="tpl_submit").click().run()
    assert any("Fix these before submitting" in e.value and "exactly once" in e.value for e in at.error)
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM template_version WHERE status='pending'")).scalar() == 0


def _submit_sms(rt, identity, body: str) -> AppTest:
    at = on_page(rt, identity, "pages/templates.py")
    at.text_area(key="tpl_text_COUPON_SMS").input(body).run()
    assert at.metric[0].value == "GSM-7"
    at.button(key="tpl_submit").click().run()
    assert not at.exception
    assert "awaits approval" in texts(at)
    return at


def _approve_newest(rt, identity) -> AppTest:
    at = on_page(rt, identity, "pages/templates.py")
    at.button(key="tpl_approve").click().run()
    return at


def test_four_eyes_approval_then_the_engine_uses_it_and_rollback(rt, team):
    # The approver writes a version: they cannot approve their own.
    _submit_sms(rt, team["approver"], "Own {{ validation_code }}")
    at = _approve_newest(rt, team["approver"])
    assert "author of a version cannot approve it" in texts(at)
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT status FROM template_version")).scalar() == "pending"

    # The admin (a different person) approves it: it becomes active and the engine uses it.
    at = _approve_newest(rt, team["admin"])
    assert "approved and active" in texts(at)
    run(generate(rt, {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}, org_id=1))
    assert outbox(rt)[-1]["body"].startswith("Own ")

    # A second version by the editor, approved by the approver.
    _submit_sms(rt, team["editor"], "Second {{ validation_code }}")
    at = _approve_newest(rt, team["approver"])
    assert "approved and active" in texts(at)
    run(generate(rt, {"entityType": "MOBILE", "entityValue": "+919812345678", "action": "COUPON"}, org_id=1))
    assert outbox(rt)[-1]["body"].startswith("Second ")

    # Roll back to version 1, with a reason; the diff shows both texts.
    at = on_page(rt, team["approver"], "pages/templates.py")
    at.selectbox(key="tpl_pick").select("v1 (approved)").run()
    at.text_input(key="tpl_rollback_reason").input("customers preferred it").run()
    at.button(key="tpl_reactivate").click().run()
    assert "active again" in texts(at)
    assert any("-text: Own" in c.value and "+text: Second" in c.value for c in at.code)
    run(generate(rt, {"entityType": "MOBILE", "entityValue": "+919812345670", "action": "COUPON"}, org_id=1))
    assert outbox(rt)[-1]["body"].startswith("Own ")
    with rt.db.connect() as conn:
        trail = conn.execute(text("SELECT actor, action FROM audit_log WHERE target LIKE 'template:%' ORDER BY id")).all()
        assert ("abe", "template.reactivate") in trail and ("ada", "template.approve") in trail
        assert conn.execute(text("SELECT reason FROM audit_log WHERE action='template.reactivate'")).scalar() \
            == "customers preferred it"


def test_reject_needs_a_reason_and_keeps_it(rt, team):
    _submit_sms(rt, team["editor"], "Maybe {{ validation_code }}")
    at = on_page(rt, team["approver"], "pages/templates.py")
    at.button(key="tpl_reject").click().run()
    assert "needs a reason" in texts(at)
    at.text_input(key="tpl_reject_reason").input("tone is off").run()
    at.button(key="tpl_reject").click().run()
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT status, reason FROM template_version")).one() == ("rejected", "tone is off")


def test_test_send_produces_an_outbox_message_and_validates(rt, team):
    at = on_page(rt, team["editor"], "pages/test_send.py")
    at.text_input(key="ts_entity_value").input("9955882233")
    at.button(key="ts_submit").click().run()
    assert not at.exception
    assert at.metric[0].value == str(rt_request_id(rt))
    [message] = outbox(rt)
    assert message["recipient"] == PHONE
    assert any(message["body"] == t.value for t in at.text)  # the outbox message as the recipient sees it
    code = message["body"].rsplit(" ", 1)[-1].rstrip(".")
    at.text_input(key="ts_code").input(code)
    at.button(key="ts_validate_submit").click().run()
    assert "Valid: the code is now used." in texts(at)


def rt_request_id(rt) -> int:
    with rt.db.connect() as conn:
        return conn.execute(text("SELECT max(id) FROM otp_request")).scalar()


def test_test_send_shows_errors_with_codes_and_dry_run_sends_nothing(rt, team):
    at = on_page(rt, team["editor"], "pages/test_send.py")
    at.text_input(key="ts_entity_value").input("12")
    at.button(key="ts_submit").click().run()
    assert "Refused with HTTP 400" in texts(at)
    assert 8056 in list(at.dataframe[0].value["code"])
    at.text_input(key="ts_entity_value").input("9955882233")
    at.checkbox(key="ts_dry").check()
    at.button(key="ts_submit").click().run()
    assert "Dry run: nothing was sent or counted" in texts(at)
    assert outbox(rt) == []
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_counter")).scalar() == 0


def test_outbox_page_filters_by_recipient(rt, team):
    for number in ("+919955882233", "+919812345678"):
        run(generate(rt, {"entityType": "MOBILE", "entityValue": number, "action": "COUPON"}, org_id=1))
    at = on_page(rt, team["editor"], "pages/outbox.py")
    assert len(at.dataframe[0].value) == 2
    at.text_input(key="outbox_recipient").input("98123").run()
    assert list(at.dataframe[0].value["to"]) == ["+919812345678"]


def test_config_page_validates_and_audits(rt, team):
    at = on_page(rt, team["admin"], "pages/config.py")
    at.number_input(key="cfg_validity").set_value(3)
    at.multiselect(key="cfg_channels").set_value([])
    at.button(key="cfg_save").click().run()
    assert "enable at least one channel" in texts(at)
    at.multiselect(key="cfg_channels").set_value(["SMS", "EMAIL"])
    at.text_input(key="cfg_reason").input("shorter codes life")
    at.button(key="cfg_save").click().run()
    assert "Saved the configuration of COUPON" in texts(at)
    assert rt.config_for(1, Action.COUPON).validity_minutes == 3
    with rt.db.connect() as conn:
        row = conn.execute(text("SELECT actor, reason, detail FROM audit_log WHERE action='config.update'")).one()
    assert row[0] == "ada" and row[1] == "shorter codes life" and '"validity_minutes"' in row[2]


def test_admin_creates_staff_and_a_client_secret_shown_once(rt, team):
    at = on_page(rt, team["admin"], "pages/admin.py")
    at.text_input(key="staff_username").input("newbie")
    at.text_input(key="staff_password").input("password-456")
    at.selectbox(key="staff_role").select("viewer")
    at.button(key="staff_add").click().run()
    assert "Added newbie as viewer" in texts(at)
    at.text_input(key="client_name").input("shop")
    at.button(key="client_create").click().run()
    shown = [c.value for c in at.code if c.value.startswith("key: ")]
    assert len(shown) == 1
    secret = shown[0].split("secret: ")[1].split("\n")[0]
    assert rt.auth.verify(shown[0].split("key: ")[1].split("\n")[0], secret) is not None
    at.run()
    assert not [c for c in at.code if c.value.startswith("key: ")]  # shown once


def test_admin_sets_a_clients_token_life(rt, team):
    from core.services.admin_actions import new_api_client
    shop = new_api_client(rt, actor=team["admin"], name="shop", permissions="otp:write", org_id=1)
    other = new_api_client(rt, actor=team["admin"], name="other", permissions="otp:write", org_id=1)
    at = on_page(rt, team["admin"], "pages/admin.py")
    [table] = [d.value for d in at.dataframe if "token TTL (s)" in d.value.columns]
    assert list(table["token TTL (s)"]) == [300, 300]
    at.selectbox(key="client_ttl_pick").select(f"other ({other.key})").run()
    at.number_input(key=f"client_ttl_seconds_{other.client.id}").set_value(900)
    at.button(key="client_ttl_save").click().run()
    assert not at.exception
    assert "Tokens of other now live 900 s" in texts(at)
    with rt.db.connect() as conn:
        ttls = dict(conn.execute(text("SELECT name, token_ttl_seconds FROM api_client")).all())
        audited = conn.execute(text("SELECT actor, target, detail FROM audit_log WHERE action='client.token_ttl'")).one()
    assert ttls == {"shop": 300, "other": 900}
    # By name, as its creation and revocation are: one search finds every entry of a client.
    assert audited == ("ada", "client:other", f'{{"id": {other.client.id}, "token_ttl_seconds": 900}}')
    assert rt.auth.verify(other.key, other.secret).token_ttl_seconds == 900  # what its next token gets
    assert shop.client.id != other.client.id


def test_admin_sets_where_a_clients_end_user_addresses_come_from(rt, team):
    at = on_page(rt, team["admin"], "pages/admin.py")
    at.text_input(key="client_name").input("app")
    at.text_input(key="client_ip_header").input("X-End-User-IP")
    at.button(key="client_create").click().run()
    made = [c.value for c in at.code if c.value.startswith("key: ")][0]
    key, secret = made.split("key: ")[1].split("\n")[0], made.split("secret: ")[1].split("\n")[0]
    assert rt.auth.verify(key, secret).end_user_ip_header == "X-End-User-IP"
    client_id = rt.auth.verify(key, secret).id
    field = f"client_ip_header_{client_id}"
    at.text_input(key=field).input("not a header").run()
    at.button(key="client_ip_header_save").click().run()
    assert "not an HTTP header name" in texts(at)
    assert rt.auth.verify(key, secret).end_user_ip_header == "X-End-User-IP"  # a bad name changes nothing
    at.text_input(key=field).input("").run()
    at.button(key="client_ip_header_save").click().run()
    assert "nowhere (a backend)" in texts(at)
    assert rt.auth.verify(key, secret).end_user_ip_header is None  # the console's own memory was dropped
    with rt.db.connect() as conn:
        targets = conn.execute(text("SELECT DISTINCT target FROM audit_log WHERE action LIKE 'client.%'")).scalars().all()
    assert targets == ["client:app"]

def test_core_refuses_writes_from_a_role_that_lacks_them(rt, team):
    from core.admin.staff import PermissionDenied
    from core.db.models import ActionConfigUpdate
    from core.services.admin_actions import save_action_config
    from core.services.trials import trial_generate
    with pytest.raises(PermissionDenied):
        trial_generate(rt, actor=team["viewer"], payload={}, org_id=1)
    with pytest.raises(PermissionDenied):
        save_action_config(rt, actor=team["editor"], action=Action.COUPON, update=ActionConfigUpdate(), reason="", org_id=1)
    # A role claimed in the console session is not trusted: the database's role is.
    forged = StaffIdentity(team["viewer"].id, "vic", "admin")
    with pytest.raises(PermissionDenied):
        save_action_config(rt, actor=forged, action=Action.COUPON, update=ActionConfigUpdate(), reason="", org_id=1)


def test_gateways_page_saves_a_provider_and_never_shows_the_secret(rt, team):
    at = on_page(rt, team["admin"], "pages/gateways.py")
    assert not at.exception
    at.selectbox(key="gw_channel").select("SMS").run()
    at.text_input(key="gw_name").input("twilio-main")
    at.selectbox(key="gw_provider").select("twilio_sms").run()
    at.text_input(key="gw_f_sender").input("+15005550006")
    at.text_input(key="gw_f_credentials_account_sid").input("AC1234567890")
    at.text_input(key="gw_f_credentials_auth_token").input("very-secret-token")
    at.text_input(key="gw_reason").input("go live with Twilio")
    at.button(key="gw_save").click().run()
    assert "Saved gateway twilio-main" in texts(at)
    table = at.dataframe[0].value
    assert list(table["name"]) == ["twilio-main"] and list(table["provider"]) == ["twilio_sms"]
    assert "very-secret-token" not in table.to_string() and "AC1234567890" not in table.to_string()
    assert rt.gateway_for(1, Action.COUPON, Channel.SMS).name == "twilio-main"
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT action FROM audit_log WHERE target='gateway:twilio-main'")).scalar() == "gateway.save"


def test_config_page_sets_per_action_abuse_limits(rt, team):
    at = on_page(rt, team["admin"], "pages/config.py")
    at.text_input(key="cfg_destination_limit").input("x")
    at.text_input(key="cfg_reason").input("tighter limits for coupons")
    at.button(key="cfg_save").click().run()
    assert "destination limit must be a whole number" in texts(at)
    at.text_input(key="cfg_destination_limit").input("2")
    at.text_input(key="cfg_prefix_limit").input("0")
    at.button(key="cfg_save").click().run()
    assert "Saved the configuration of COUPON" in texts(at)
    config = rt.config_for(1, Action.COUPON)
    assert config.destination_limit == 2 and config.prefix_limit == 0 and config.ip_limit is None


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process pid listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                hex_address, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_address)
                # /proc prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def test_the_readme_console_command_listens_on_loopback_only(tmp_path):
    """`streamlit run console.py` from the repository, as the README says (only the port is ours): the
    repository's .streamlit/config.toml keeps it on 127.0.0.1, sends no usage statistics, shows no Deploy."""
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False and config["client"]["toolbarMode"] == "viewer"
    port = free_port()
    env = {**os.environ, "OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}",
           "OTP_SECRET_KEY_FILE": str(tmp_path / "secret.key")}
    env.pop("OTP_SECRET_KEY", None)
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "console.py", "--server.port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/_stcore/health")
        assert listening_addresses(server.pid) == {("127.0.0.1", port)}
    finally:
        stop(server)
