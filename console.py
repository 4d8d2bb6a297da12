"""The operations console: the frame that sets up shared state once and lists every page for the role."""
from __future__ import annotations

import sys

import streamlit as st

from console_state import can, current_session, runtime, sign_out
from core.config import Settings, checked_settings
from core.runtime import Runtime
from core.staff import needs_first_admin


@st.cache_resource
def get_settings_once() -> tuple[Settings | None, list[str]]:
    """The settings, read and checked once per console process; a bad one is reported once on stderr."""
    settings, problems = checked_settings()
    if problems:
        print("\n".join(problems), file=sys.stderr)
    return settings, problems


@st.cache_resource
def get_runtime(_settings: Settings) -> Runtime:
    """One runtime per console process; pages never cache a database session."""
    return Runtime(_settings)


st.set_page_config(page_title="OTP console", page_icon=":material/lock:", layout="wide")
if "runtime" not in st.session_state:  # tests hand in their own runtime
    settings, problems = get_settings_once()
    if settings is None:  # the console serves nothing but the lines that name the bad settings
        st.error("The console cannot start: fix these settings and restart it.\n\n" +
                 "\n".join(f"- `{line.removeprefix('bad setting: ')}`" for line in problems))
        st.stop()
    st.session_state["runtime"] = get_runtime(settings)

with runtime().session() as db:
    first_start = needs_first_admin(db)
session = None if first_start else current_session()

# The gate pages share the status page's url_path: a rerun after signing in (or out) then lands on the
# page that takes that place instead of a "page not found".
if first_start:
    pages = [st.Page("pages/setup.py", title="Create the first admin", icon=":material/person_add:", default=True, url_path="status")]
elif session is None:
    pages = [st.Page("pages/login.py", title="Sign in", icon=":material/login:", default=True, url_path="status")]
else:
    pages = [st.Page("pages/home.py", title="Status", icon=":material/monitor_heart:", default=True, url_path="status"),
             st.Page("pages/templates.py", title="Templates", icon=":material/edit_note:"),
             st.Page("pages/dash_usage.py", title="Daily usage", icon=":material/bar_chart:"),
             st.Page("pages/dash_delivery.py", title="Delivery", icon=":material/local_shipping:"),
             st.Page("pages/dash_limits.py", title="Rate limits", icon=":material/speed:")]
    if can("test.send"):
        pages.append(st.Page("pages/test_send.py", title="Test send", icon=":material/send:"))
    if can("outbox.view") and runtime().settings.is_development:
        pages.append(st.Page("pages/outbox.py", title="Outbox", icon=":material/inbox:"))
    if can("config.edit"):
        pages.append(st.Page("pages/config.py", title="OTP configuration", icon=":material/tune:"))
        pages.append(st.Page("pages/gateways.py", title="Gateways", icon=":material/hub:"))
    if can("staff.manage"):
        pages.append(st.Page("pages/admin.py", title="Staff and API clients", icon=":material/group:"))
    if can("templates.approve"):
        pages.append(st.Page("pages/audit.py", title="Audit log", icon=":material/history:"))
    with st.sidebar:
        st.caption(f"Signed in as **{session.identity.username}** ({session.identity.role})")
        if st.button("Sign out", key="sign_out"):
            sign_out()
            st.rerun()

st.navigation(pages).run()
