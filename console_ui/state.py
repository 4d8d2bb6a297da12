"""What every console page shares: the runtime, who is signed in, and the page-level permission gate."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import streamlit as st

from core.admin.console_sessions import COOKIE, end_session, resume_session, start_session
from core.admin.organisations import organisations_of
from core.admin.staff import ConsoleSession, PermissionDenied, StaffIdentity, memberships, require, role_allows
from core.clock import utcnow
from core.db.models import OrganisationPublic
from core.runtime import Runtime

SESSION_KEY = "console_session"
ACCESS_KEY = "console_access"  # what enter_org found on this run: the organisations, the role in the selected one
SWITCH_KEY = "org_switch"  # the sidebar's organisation switcher
# Kept when the organisation changes; every other key (forms, picks, flashes of the last organisation) is dropped.
KEPT_ON_SWITCH = ("runtime", SESSION_KEY, ACCESS_KEY, SWITCH_KEY, "console_cookie_pending", "dead_cookie")
COOKIE_KEY = "console_cookie_pending"  # the token to put in the browser's cookie on this run ("" clears it)
# The server-side row's idle expiry is pushed out at most this often: a write per click would be wasted, and
# the row then lives at most this much shorter than the in-memory session.
SYNC_EVERY = timedelta(seconds=60)


def runtime() -> Runtime:
    """The console's runtime, set up by console.py's frame.

    Right after the console starts, Streamlit still routes a deep link (a bookmark of /config) straight to the
    page's script in pages/, without the frame; the frame is run instead, which signs the visitor in (or finds
    the session) and from then on routes every page itself.
    """
    if "runtime" not in st.session_state:
        st.switch_page("console.py")
    return st.session_state["runtime"]


def _cookie_token() -> str | None:
    try:
        token = st.context.cookies.get(COOKIE)
    except Exception:  # no browser behind this run (a bare script run)
        return None
    return token if isinstance(token, str) else None


def current_session() -> ConsoleSession | None:
    """The live session, extended by this run; None (and signed out) once it has expired or was ended.

    A fresh Streamlit session (a reload, a new tab) has empty state: the browser's cookie then names the
    server-side session, which resumes if it is still alive.
    """
    rt, now = runtime(), utcnow()
    session: ConsoleSession | None = st.session_state.get(SESSION_KEY)
    if session is None:
        token = _cookie_token()
        # The cookies are those the browser sent when this page was opened; a token found dead is not asked
        # about again on every rerun, and the browser is told to drop it.
        if not token or token == st.session_state.get("dead_cookie"):
            return None
        with rt.session() as db:
            identity = resume_session(db, token=token, idle_minutes=rt.settings.console_session_minutes, now=now)
        if identity is None:
            st.session_state["dead_cookie"], st.session_state[COOKIE_KEY] = token, ""
            return None
        session = ConsoleSession.start(identity, rt.settings.console_session_minutes, now, token=token)
        st.session_state[SESSION_KEY] = session
        return session
    if not session.touch(now):
        _end(session, "expired", "Your session expired. Please sign in again.")
        return None
    if session.token and (session.synced_at is None or now - session.synced_at >= SYNC_EVERY):
        with rt.session() as db:
            identity = resume_session(db, token=session.token, idle_minutes=session.idle_minutes, now=now)
        if identity is None:
            _end(session, None, "Your session has ended. Please sign in again.")
            return None
        session.identity, session.synced_at = identity, now
    return session


def _end(session: ConsoleSession, why: str | None, message: str) -> None:
    """Forget the session here and in the database (why None: it is already gone there), and clear the cookie."""
    if why:
        with runtime().session() as db:
            end_session(db, identity=session.identity, token=session.token, why=why)
    st.session_state["dead_cookie"] = session.token
    st.session_state.pop(SESSION_KEY, None)
    st.session_state[COOKIE_KEY] = ""
    st.session_state["signed_out_reason"] = message


def sign_in(identity: StaffIdentity) -> None:
    rt, now = runtime(), utcnow()
    with rt.session() as db:
        token = start_session(db, identity=identity, idle_minutes=rt.settings.console_session_minutes, now=now)
    st.session_state[SESSION_KEY] = ConsoleSession.start(identity, rt.settings.console_session_minutes, now,
                                                         token=token)
    st.session_state[COOKIE_KEY] = token
    st.session_state.pop("signed_out_reason", None)


def sign_out() -> None:
    session = st.session_state.get(SESSION_KEY)
    if session is not None:
        _end(session, "sign_out", "You are signed out.")


def write_session_cookie() -> None:
    """Put the session's token in (or take it out of) the browser's cookie, once, after a sign-in or sign-out.

    Streamlit can read cookies (st.context.cookies) but not set them, so a line of JavaScript does. The cookie
    holds only the random token (the database keeps its hash); it is never in the URL; SameSite=Strict keeps
    other sites from sending it, and Secure is added when the console is served over HTTPS.
    """
    token = st.session_state.pop(COOKIE_KEY, None)
    if token is None:
        return
    life = "" if token else "; max-age=0"
    st.html(f"<script>document.cookie = {json.dumps(f'{COOKIE}={token}; path=/; SameSite=Strict{life}')}"
            " + (location.protocol === 'https:' ? '; Secure' : '');</script>", unsafe_allow_javascript=True)


def me() -> StaffIdentity:
    """The signed-in person; pages only run behind the console's gate, so there always is one."""
    session = st.session_state.get(SESSION_KEY)
    if session is None:
        st.error("Please sign in.")
        st.stop()
    return session.identity


@dataclass(frozen=True)
class Access:
    """Where the signed-in person works on this run, read from staff_membership by enter_org (never at sign-in)."""
    org_id: int
    role: str  # their role in org_id
    platform_admin: bool
    organisations: tuple[OrganisationPublic, ...]  # the ones they may switch to (platform admins: all)


def enter_org() -> Access | None:
    """Settle, once per run (console.py calls it before any page runs), the organisation the signed-in person
    works in: the one kept in their session, else their first. Core checks the membership (require), so an
    organisation id put into the session by other means than the switcher is refused, whatever exists; the
    page then stops with a message that says nothing about that organisation, and the next run starts in the
    person's first organisation. None (and the page stopped) for a person with no organisation at all."""
    session = st.session_state.get(SESSION_KEY)
    if session is None:
        return None
    identity = session.identity
    st.session_state.pop(ACCESS_KEY, None)
    with runtime().session() as db:
        choices = tuple(organisations_of(db, identity))
        if not choices:
            st.error("You do not work in any organisation yet: ask a platform admin to add you to one.")
            st.stop()
        org_id = session.org_id if session.org_id is not None else choices[0].id
        try:
            row = require(db, identity, "status.view", org_id)
        except PermissionDenied:
            session.org_id = None
            st.session_state[SESSION_KEY] = session  # assigned again, so every copy of the state has the change
            st.error("You do not work in that organisation. Choose one of yours.")
            st.stop()
        role = memberships(db, identity.id)[org_id]
        platform_admin = bool(row.platform_admin)
    session.org_id = org_id
    st.session_state[SESSION_KEY] = session
    access = Access(org_id, role, platform_admin, choices)
    st.session_state[ACCESS_KEY] = access
    return access


def org_choices() -> list[OrganisationPublic]:
    """The organisations the signed-in person may switch to (platform admins: every one), oldest first."""
    access = st.session_state.get(ACCESS_KEY)
    return list(access.organisations) if access is not None else []


def selected_org() -> int:
    """The organisation the signed-in person works in now: every page passes it to core, which checks their
    membership in it on each call. console.py settles it (enter_org) before any page runs; when the session
    names another one than was checked (or a page runs without the frame, as under AppTest), it is checked here.
    A page's widget callbacks run before the frame: they use the organisation of the run that drew them."""
    session = st.session_state.get(SESSION_KEY)
    if session is None:
        st.error("Please sign in.")
        st.stop()
    access = st.session_state.get(ACCESS_KEY)
    if session.org_id is None or access is None or access.org_id != session.org_id:
        enter_org()  # not the organisation the frame checked (or no frame ran): checked now, or the page stops
    return session.org_id


def switched_org() -> None:
    """The switcher's callback: work in the chosen organisation, with every page's forms, picks and messages of
    the last one forgotten (nothing typed for one organisation can be saved into another)."""
    session = st.session_state.get(SESSION_KEY)
    if session is None:
        return
    session.org_id = st.session_state[SWITCH_KEY]
    st.session_state[SESSION_KEY] = session
    for key in list(st.session_state):
        if key not in KEPT_ON_SWITCH:
            del st.session_state[key]


def org_role() -> str | None:
    """The signed-in person's role in the selected organisation, as enter_org read it on this run."""
    access = st.session_state.get(ACCESS_KEY)
    return access.role if access is not None else None


def is_platform_admin() -> bool:
    access = st.session_state.get(ACCESS_KEY)
    return access is not None and access.platform_admin


def can(permission: str) -> bool:
    """Whether to offer something (navigation, a button); core checks again on the call itself."""
    if st.session_state.get(SESSION_KEY) is None:
        return False
    if permission == "orgs.manage":
        return is_platform_admin()
    role = org_role()
    return role is not None and role_allows(role, permission)


def gate(permission: str) -> StaffIdentity:
    """Stop the page unless the signed-in person may use it in the selected organisation (navigation already
    hides it; this is the lock): core's require, with the role read now from staff_membership."""
    identity = me()
    org_id = selected_org()
    with runtime().session() as db:
        try:
            require(db, identity, permission, None if permission == "orgs.manage" else org_id)
        except PermissionDenied:
            st.error("Your role does not allow this page.")
            st.stop()
    return identity


def form_needs_loading(marker: str, loaded: object, *widget_keys: str) -> bool:
    """Whether a form must be filled with what is stored: it shows something else (marker holds what was
    loaded), or its widgets' state is gone. Streamlit drops a widget's state when a run on another page does not
    draw it, while a plain marker stays, so after a visit elsewhere the marker alone would keep 0s and blanks."""
    return st.session_state.get(marker) != loaded or any(key not in st.session_state for key in widget_keys)
