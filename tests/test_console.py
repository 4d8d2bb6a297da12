"""The console under Streamlit's AppTest, on a fresh database."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.config import ROOT
from core.enums import Action


@pytest.fixture(autouse=True)
def _clear_streamlit_caches():
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()
    yield


@pytest.fixture
def console(rt):
    at = AppTest.from_file(str(ROOT / "console.py"), default_timeout=30)
    at.session_state["runtime"] = rt
    return at


def test_home_shows_status_and_configuration(console, rt):
    at = console.run()
    assert not at.exception
    assert at.title[0].value == "OTP service status"
    assert "Database reachable" in at.success[0].value
    table = at.dataframe[1].value
    assert sorted(table["action"]) == sorted(a.value for a in Action)
    assert set(table["validity (min)"]) == {10}
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Daily limit per user"] == "500" and metrics["OTP requests"] == "0"
