"""The API with another SQLite synchronous mode, for bench/engine.py --synchronous FULL,NORMAL.

    BENCH_SQLITE_SYNCHRONOUS=NORMAL uvicorn sync_app:app --app-dir bench

Everything but the pragma is api:app unchanged; the service itself offers no such switch (core.db.engine).
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core.db.engine  # noqa: E402

MODE = os.environ["BENCH_SQLITE_SYNCHRONOUS"].upper()
if MODE not in ("OFF", "NORMAL", "FULL", "EXTRA"):
    raise SystemExit(f"BENCH_SQLITE_SYNCHRONOUS must be OFF, NORMAL, FULL or EXTRA, not {MODE!r}")
core.db.engine.SQLITE_SYNCHRONOUS = MODE  # read by each new connection

from api import app  # noqa: E402,F401
