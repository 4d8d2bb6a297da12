"""What bench/engine.py and bench/load.py share: the API client, the request bodies, the checks, the codes sent.

Both benchmarks send generates for new users (one distinct valid Indian mobile each, bench/loadgen.Numbers) with
the outbox gateway, then validates of the right code read back from the outbox table; both start the API with
the abuse limits that would refuse one load generator on one address turned off (loadgen.LIMITS_OFF).
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from loadgen import CODE_IN_MESSAGE, LIMITS_OFF  # noqa: E402

ACTION = "COUPON"


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def generate_payload(number: str) -> dict:
    return {"entityType": "MOBILE", "entityValue": number, "action": ACTION,
            "channels": [{"type": "SMS", "value": number}]}


def validate_payload(number: str, code: str) -> dict:
    return {"entityType": "MOBILE", "entityValue": number, "action": ACTION, "code": code}


def generate_body(number: str) -> bytes:
    return _json(generate_payload(number))


def validate_body(number: str, code: str) -> bytes:
    return _json(validate_payload(number, code))


def generate_ok(status: int, body: bytes) -> bool:
    return status == 200 and b'"createdId"' in body


def validate_ok(status: int, body: bytes) -> bool:
    return status == 200 and b'"entity":true' in body


def empty_ok(status: int, body: bytes) -> bool:
    return status == 200 and body == b"{}"


def server_env(**settings: str) -> dict[str, str]:
    """This process's environment without any OTP_ setting, plus the bench's: development, limits off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTP_")}
    env.update(OTP_ENV="development", PYTHONDONTWRITEBYTECODE="1", **LIMITS_OFF, **settings)
    return env


def create_api_client(env: dict[str, str], name: str = "bench") -> dict[str, str]:
    """`python -m cli client create NAME` (which also applies the migrations): its HTTP Basic header."""
    done = subprocess.run([sys.executable, "-m", "cli", "client", "create", name], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"client create failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    values = dict(re.findall(r"^(key|secret): (\S+)$", done.stdout, re.MULTILINE))
    if "key" not in values or "secret" not in values:
        raise RuntimeError(f"could not read key and secret from:\n{done.stdout}")
    token = base64.b64encode(f"{values['key']}:{values['secret']}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def codes_sent(database_url: str, wanted: set[str] | list[str]) -> dict[str, str]:
    """The code in the newest outbox message to each wanted number (development's outbox gateway keeps them)."""
    from sqlalchemy import create_engine, text

    wanted = set(wanted)
    engine = create_engine(database_url)
    found: dict[str, str] = {}
    try:
        with engine.connect() as conn:
            for recipient, body in conn.execute(text("SELECT recipient, body FROM outbox_message ORDER BY id")):
                if recipient in wanted:
                    match = CODE_IN_MESSAGE.search(body)
                    if match:
                        found[recipient] = match.group(1)
    finally:
        engine.dispose()
    return found


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
