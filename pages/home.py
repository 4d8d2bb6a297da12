"""Status: is the service up, where does it store data, how is each action configured."""
import pandas as pd
import streamlit as st

from console_state import runtime
from core.status import configuration_table, service_status

rt = runtime()
status = service_status(rt)

st.title("OTP service status")
if status.database_ok:
    st.success(f"Database reachable: {status.database}")
else:
    st.error(f"Database unreachable ({status.database_error}): {status.database}")

left, middle, right, last = st.columns(4)
left.metric("Environment", status.environment)
middle.metric("OTP requests", f"{status.requests_total:,}")
right.metric("Live codes", f"{status.live_codes:,}")
last.metric("Daily limit per user", f"{status.daily_limit:,}")
st.caption(f"Day boundary: midnight in {status.time_zone} · default phone region: {status.default_region}")

st.subheader("Gateways")
st.dataframe(pd.DataFrame([{"channel": c, "gateway": g} for c, g in status.gateways.items()]),
             hide_index=True, width="stretch")

st.subheader("OTP configuration per action")
st.dataframe(pd.DataFrame(configuration_table(rt)), hide_index=True, width="stretch")
