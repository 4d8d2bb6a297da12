"""The operations console: the frame that sets up shared state once and lists every page."""
from __future__ import annotations

import streamlit as st

from core.runtime import Runtime


@st.cache_resource
def get_runtime() -> Runtime:
    """One runtime per console process; pages never cache a database session."""
    return Runtime()


st.set_page_config(page_title="OTP console", page_icon="🔐", layout="wide")
if "runtime" not in st.session_state:  # tests hand in their own runtime
    st.session_state["runtime"] = get_runtime()

pages = [
    st.Page("pages/home.py", title="Status", icon="🏠", default=True),
]
st.navigation(pages).run()
