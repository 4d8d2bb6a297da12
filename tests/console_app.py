"""The console under Streamlit's AppTest: a fresh app on a test's runtime, signed in as someone, on a page."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest

from console_ui.state import SESSION_KEY
from core.admin.staff import ConsoleSession, StaffIdentity
from core.settings import ROOT


def app(rt) -> AppTest:  # type: ignore[no-untyped-def]
    """The console as a first visitor sees it, on the test's runtime (database, clock, gateways)."""
    at = AppTest.from_file(str(ROOT / "console.py"), default_timeout=60)
    at.session_state["runtime"] = rt
    return at


def signed_in(rt, identity: StaffIdentity) -> AppTest:  # type: ignore[no-untyped-def]
    """The console with identity signed in, not yet run."""
    at = app(rt)
    at.session_state[SESSION_KEY] = ConsoleSession.start(identity, 30)
    return at


def on_page(rt, identity: StaffIdentity, page: str) -> AppTest:  # type: ignore[no-untyped-def]
    """The console run once signed in as identity, then switched to page (e.g. "pages/admin.py") and run."""
    at = signed_in(rt, identity).run()
    return at.switch_page(page).run()


def texts(at: AppTest) -> str:
    """Every error, success, warning and info message on the screen, one a line."""
    parts = [e.value for kind in ("error", "success", "warning", "info") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def frame_with(at: AppTest, column: str):  # type: ignore[no-untyped-def]
    """The one table on the screen that has column."""
    [frame] = [d.value for d in at.dataframe if column in d.value.columns]
    return frame
