"""What every console page shares: the runtime, who is signed in, and the page-level permission gate."""
from __future__ import annotations

import streamlit as st

from core.runtime import Runtime
from core.staff import ConsoleSession, StaffIdentity, role_allows

SESSION_KEY = "console_session"


def runtime() -> Runtime:
    return st.session_state["runtime"]


def current_session() -> ConsoleSession | None:
    """The live session, extended by this run; None (and signed out) once it has expired."""
    session: ConsoleSession | None = st.session_state.get(SESSION_KEY)
    if session is None:
        return None
    if not session.touch():
        del st.session_state[SESSION_KEY]
        st.session_state["signed_out_reason"] = "Your session expired. Please sign in again."
        return None
    return session


def sign_in(identity: StaffIdentity) -> None:
    st.session_state[SESSION_KEY] = ConsoleSession.start(identity, runtime().settings.console_session_minutes)
    st.session_state.pop("signed_out_reason", None)


def sign_out() -> None:
    st.session_state.pop(SESSION_KEY, None)


def me() -> StaffIdentity:
    """The signed-in person; pages only run behind the console's gate, so there always is one."""
    session = st.session_state.get(SESSION_KEY)
    if session is None:
        st.error("Please sign in.")
        st.stop()
    return session.identity


def can(permission: str) -> bool:
    session = st.session_state.get(SESSION_KEY)
    return session is not None and role_allows(session.identity.role, permission)


def gate(permission: str) -> StaffIdentity:
    """Stop the page unless the signed-in role may use it (navigation already hides it; this is the lock)."""
    identity = me()
    if not role_allows(identity.role, permission):
        st.error("Your role does not allow this page.")
        st.stop()
    return identity
