"""The operations console: the frame that sets up shared state once and lists every page for the role."""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

from console_ui.state import (SWITCH_KEY, can, current_session, enter_org, runtime, sign_out, switched_org,
                              write_session_cookie)
from core.admin.staff import needs_first_admin
from core.runtime import Runtime
from core.settings import Settings, checked_settings


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


# Every page behind the sign-in: (script, title, icon, permission or None for every role). Home is "status".
PAGES = [
    ("pages/home.py", "Status", ":material/monitor_heart:", None),
    ("pages/templates.py", "Templates", ":material/edit_note:", None),
    ("pages/dash_usage.py", "Daily usage", ":material/bar_chart:", None),
    ("pages/dash_delivery.py", "Delivery", ":material/local_shipping:", None),
    ("pages/dash_limits.py", "Rate limits", ":material/speed:", None),
    ("pages/test_send.py", "Test send", ":material/send:", "test.send"),
    ("pages/outbox.py", "Outbox", ":material/inbox:", "outbox.view"),
    ("pages/config.py", "OTP configuration", ":material/tune:", "config.edit"),
    ("pages/gateways.py", "Gateways", ":material/hub:", "config.edit"),
    ("pages/admin.py", "Staff and API clients", ":material/group:", "staff.manage"),
    ("pages/audit.py", "Audit log", ":material/history:", "templates.approve"),
]


def url_path(script: str) -> str:
    return "status" if script == "pages/home.py" else Path(script).stem


def gate_pages(script: str, title: str, icon: str) -> list:
    """The sign-in (or first-admin) page under the status page's url_path, and hidden under every other page's
    too: a reload or a bookmark of /templates while signed out lands on the sign-in form rather than a "page not
    found", and the rerun after signing in runs the page that was asked for."""
    return [st.Page(script, title=title, icon=icon, default=True, url_path="status"),
            *(st.Page(script, title=title, icon=icon, url_path=url_path(p), visibility="hidden")
              for p, *_ in PAGES[1:])]


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

if first_start:
    pages = gate_pages("pages/setup.py", "Create the first admin", ":material/person_add:")
elif session is None:
    pages = gate_pages("pages/login.py", "Sign in", ":material/login:")
else:
    write_session_cookie()  # before enter_org, which may stop the run
    access = enter_org()  # the organisation of this run, its membership checked by core; stops if refused
    pages = [st.Page(script, title=title, icon=icon, default=script == "pages/home.py", url_path=url_path(script))
             for script, title, icon, permission in PAGES
             if (permission is None or can(permission))
             and (script != "pages/outbox.py" or runtime().settings.is_development)]
    with st.sidebar:
        if len(access.organisations) > 1:  # the switcher: only for people who can see more than one
            names = {o.id: o.name for o in access.organisations}
            st.session_state[SWITCH_KEY] = access.org_id
            st.selectbox("Organisation", list(names), format_func=names.__getitem__, key=SWITCH_KEY,
                         on_change=switched_org)
        st.caption(f"Signed in as **{session.identity.username}** ({access.role})")
        if st.button("Sign out", key="sign_out"):
            sign_out()
            st.rerun()

write_session_cookie()
st.navigation(pages).run()
