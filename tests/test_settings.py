"""Settings: every field refuses a bad value with its variable's name, and every face stops at start-up on one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.enums import Channel
from core.settings import Settings, settings_problems

ROOT = Path(__file__).resolve().parent.parent

# One bad value per field (as written in the environment). A field added without a case here fails
# test_every_field_has_a_bad_value_case, so that no setting goes unchecked.
BAD_VALUES = {
    "database_url": ["mysql://db/otp", "not a url"],
    "env": ["prod"],
    "secret_key": ["abc", "AAAA"],
    "secret_key_file": [str(ROOT / "data")],
    "default_region": ["ZZ", "india"],
    "timezone": ["Mars/Olympus"],
    "phone_validation": ["loose"],
    "daily_limit": ["0", "abc"],
    "brand": ["Shop\r\nBcc: x@example.com", "x" * 101],
    "max_body_bytes": ["10", "-1"],
    "body_read_seconds": ["0", "-1"],
    "metrics": ["yes"],
    "metrics_token": ["short", "has a space in it ok", "caf\u00e9-token-1234567890"],
    "cache_seconds": ["-1"],
    "auth_cache_seconds": ["-5"],
    "gateway_timeout_seconds": ["0"],
    "write_lock_timeout_seconds": ["0", "nan", "inf"],
    "console_session_minutes": ["0"],
    "login_failure_delay_seconds": ["-0.1"],
    "gateway_sms": ["twilio"],
    "gateway_email": ["smtp"],
    "gateway_phone": [""],
    "gateway_whatsapp": ["meta"],
    "gateway_zalo": ["zalo"],
    "test_numbers": ["5550100", "+1555-0100"],
    "test_code": ["12", "12 34"],
    "public_url": ["ftp://example.com", "example.com"],
    "failover_poll_seconds": ["0"],
    "destination_limit": ["-1"],
    "destination_window_minutes": ["0"],
    "client_limit": ["-1"],
    "ip_limit": ["many"],
    "ip_window_minutes": ["0"],
    "trusted_proxies": ["10.0.0.0/8,bogus", "300.1.1.1"],
    "prefix_limit": ["-3"],
    "prefix_window_minutes": ["0"],
    "channel_budgets": ["SMS=10k", "FAX=10", "SMS=5,SMS=6", "SMS"],
    "safe_mode": ["email"],
    "countries_sms": ["IN,XX"],
    "countries_phone": ["india"],
    "countries_whatsapp": ["ZZ"],
    "countries_zalo": ["V N"],
}


def test_every_field_has_a_bad_value_case():
    assert set(BAD_VALUES) == set(Settings.model_fields)


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, values in BAD_VALUES.items() for v in values])
def test_a_bad_value_is_refused_naming_its_variable(monkeypatch, field, value):
    for name in Settings.model_fields:
        monkeypatch.delenv(f"OTP_{name.upper()}", raising=False)
    monkeypatch.setenv(f"OTP_{field.upper()}", value)
    with pytest.raises(ValidationError) as info:
        Settings()
    lines = settings_problems(info.value)
    assert len(lines) == 1 and lines[0].startswith(f"OTP_{field.upper()}: "), lines
    if field == "secret_key":
        assert value not in lines[0].split(":", 1)[1]  # a secret is never echoed


def test_list_settings_keep_their_comma_syntax(monkeypatch):
    monkeypatch.setenv("OTP_CHANNEL_BUDGETS", "SMS=100000, mobile=5000, EMAIL=0")
    monkeypatch.setenv("OTP_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1, ::1")
    monkeypatch.setenv("OTP_COUNTRIES_SMS", "in,VN")
    monkeypatch.setenv("OTP_TEST_NUMBERS", "+15550100, +1555*")
    settings = Settings()
    assert settings.channel_budgets == {Channel.SMS: 100000, Channel.PHONE: 5000, Channel.EMAIL: 0}
    assert settings.budget_for("PHONE") == 5000 and settings.budget_for("ZALO") is None
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    assert settings.countries_for("SMS") == {"IN", "VN"}
    assert settings.is_test_number("+15550100") and settings.is_test_number("+15559999")
    assert not settings.is_test_number("+15560100")


def _face_env(tmp_path: Path, **bad: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTP_")}
    env.update(OTP_DATABASE_URL=f"sqlite:///{tmp_path / 'otp.db'}", OTP_SECRET_KEY_FILE=str(tmp_path / "key"),
               **bad)
    return env


FACES = {
    "serve.py": [sys.executable, "serve.py", "--port", "0"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "api:app", "--port", "0"],
    "cli": [sys.executable, "-m", "cli", "client", "list"],
}


@pytest.mark.parametrize("face", sorted(FACES))
def test_each_face_stops_at_start_up_with_one_line(tmp_path, face):
    env = _face_env(tmp_path, OTP_CHANNEL_BUDGETS="SMS=10k")
    done = subprocess.run(FACES[face], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == ["bad setting: OTP_CHANNEL_BUDGETS: the SMS budget must be a whole number (0 refuses the "
                     "channel), not '10k'"], lines
    assert not (tmp_path / "otp.db").exists()  # stopped before touching the database


def test_the_console_shows_the_bad_setting_and_nothing_else(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    for name, value in _face_env(tmp_path, OTP_IP_WINDOW_MINUTES="0").items():
        if name.startswith("OTP_"):
            monkeypatch.setenv(name, value)
    import streamlit as st
    st.cache_resource.clear()  # the settings are read once per console process: this test is a new one
    at = AppTest.from_file(str(ROOT / "console.py"), default_timeout=60)
    try:
        at.run()
    finally:
        st.cache_resource.clear()
    assert not at.exception
    assert len(at.error) == 1 and "OTP_IP_WINDOW_MINUTES" in at.error[0].value, [e.value for e in at.error]
    assert not at.text_input  # no sign-in form: nothing but the error
    assert not (tmp_path / "otp.db").exists()
