"""Status: is the service up, where does it store data, how is each action configured."""
import pandas as pd
import streamlit as st

from console_ui.state import can, gate, runtime, selected_org
from core.services.status import configuration_table, gateway_table, safe_mode_channels, service_status
from simulate import simulate

rt = runtime()
gate("status.view")
org_id = selected_org()
status = service_status(rt, org_id=org_id)

st.title("OTP service status")
if status.database_ok:
    st.success(f"Database reachable: {status.database}")
else:
    st.error(f"Database unreachable ({status.database_error}): {status.database}")

for alert in safe_mode_channels(rt, org_id=org_id):
    st.error(alert.text(status.time_zone))

left, middle, right, last = st.columns(4)
left.metric("Environment", status.environment)
middle.metric("OTP requests", f"{status.requests_total:,}")
right.metric("Live codes", f"{status.live_codes:,}")
last.metric("Daily limit per user", f"{status.daily_limit:,}")
st.caption(f"Day boundary: midnight in {status.time_zone} · default phone region: {status.default_region}")

st.subheader("Gateways")
st.dataframe(pd.DataFrame(gateway_table(rt, org_id=org_id)), hide_index=True, width="stretch", key="home_gateways")

st.subheader("OTP configuration per action")
st.dataframe(pd.DataFrame(configuration_table(rt, org_id=org_id)), hide_index=True, width="stretch")

st.subheader("Demo traffic")
if flash := st.session_state.pop("home_simulated", None):
    st.success(flash)
if not rt.settings.is_development:
    st.caption("Demo traffic is available in development mode only.")
elif org_id != 1:
    st.caption("Demo traffic is simulated in the default organisation only.")
elif can("test.send"):
    st.caption("Fills the dashboards with three days of simulated customers through the real engine (simulated "
               "gateways that fail and lag; nothing leaves this machine). For 30 days run "
               "`python -m simulate --days 30 --users 20000`.")
    if st.button("Simulate a little traffic", key="home_simulate"):
        with st.spinner("Simulating…"):
            report = simulate(rt, days=3, users=2000, per_day=60, small=True, end=rt.clock())
        st.cache_data.clear()
        st.session_state["home_simulated"] = f"Simulated {report}."
        st.rerun()
