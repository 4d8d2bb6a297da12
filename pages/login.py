"""Sign in: one message for every failure, so it never tells which part was wrong."""
import streamlit as st

from console_ui.state import runtime, sign_in
from core.admin.staff import authenticate

st.title("Sign in to the OTP console")
if reason := st.session_state.get("signed_out_reason"):
    st.info(reason)

with st.form("login"):
    username = st.text_input("Username", key="login_username")
    password = st.text_input("Password", type="password", key="login_password")
    submitted = st.form_submit_button("Sign in", key="login_submit")

if submitted:
    with runtime().session() as db:
        identity = authenticate(db, username=username, password=password,
                                failure_delay=runtime().settings.login_failure_delay_seconds)
    if identity is None:
        st.error("Unknown username or wrong password.")
    else:
        sign_in(identity)
        st.rerun()
