"""First start: the database has no staff, so the first person to arrive creates the admin account."""
import streamlit as st

from console_ui.state import runtime, sign_in
from core.admin.staff import InvalidStaff, StaffIdentity, create_first_admin

st.title("Welcome: create the first admin")
st.write("No staff account exists yet. The account you create now can add everyone else.")

with st.form("first_admin"):
    username = st.text_input("Username", key="setup_username")
    password = st.text_input("Password (at least 10 characters)", type="password", key="setup_password")
    confirm = st.text_input("Repeat the password", type="password", key="setup_confirm")
    submitted = st.form_submit_button("Create admin account", key="setup_submit")

if submitted:
    if password != confirm:
        st.error("The two passwords differ.")
    else:
        try:
            with runtime().session() as db:
                admin = create_first_admin(db, username=username, password=password)
        except InvalidStaff as exc:
            st.error(str(exc))
        else:
            sign_in(StaffIdentity(admin.id, admin.username, admin.role))
            st.rerun()
