"""Daily usage: requests, codes, re-sends, validations and conversion per local day, action and channel."""
import altair as alt
import pandas as pd
import streamlit as st

from console_ui.state import gate
from console_ui.widgets import (breakdown, count_y, csv_button, day_tooltip, day_x, delta, pct, period_caption, query,
                                rollups_up_to_date, seconds, sidebar_filters)
from core.reporting.dashboards import daily_usage, time_to_validate_by_day, usage_totals

gate("status.view")
st.title("Daily usage")
filters = sidebar_filters("usage")
rollups_up_to_date()
period_caption(filters)

now, before = query(usage_totals, filters), query(usage_totals, filters.previous())
# Two rows of KPIs: six in one row leave each too narrow for "12.3 s", which was cut off.
counts, quality = st.columns(4), st.columns(4)
counts[0].metric("Generate requests", f"{now.requests:,}", delta(now.requests, before.requests))
counts[1].metric("Codes issued", f"{now.issued:,}", delta(now.issued, before.issued))
counts[2].metric("Re-sends", f"{now.resent:,}", delta(now.resent, before.resent), delta_color="inverse")
counts[3].metric("Successful validations", f"{now.validated:,}", delta(now.validated, before.validated))
quality[0].metric("Conversion", pct(now.conversion), delta(now.conversion, before.conversion, percent=True),
                  help="Codes issued in the period that were used, over codes issued in the period.")
TTV_HELP = ("From issue to successful validation; each percentile is the upper edge of its histogram bin "
            "(at most 6.4% above the exact value).")
quality[1].metric("Time to validate p50", seconds(now.ttv.p50), delta(now.ttv.p50, before.ttv.p50),
                  delta_color="inverse", help=TTV_HELP)
quality[2].metric("Time to validate p95", seconds(now.ttv.p95), delta(now.ttv.p95, before.ttv.p95),
                  delta_color="inverse", help=TTV_HELP)
breakdown(filters, "usage")

rows = query(daily_usage, filters)
if not rows:
    st.info("No OTP traffic in this period. The Status page can fill the database with demo traffic.")
    st.stop()

table = pd.DataFrame([{"day": r.day, "action": r.action, "requests": r.requests, "issued": r.issued,
                       "re-sends": r.resent, "validations": r.validations, "validated": r.validated,
                       "codes used": r.codes_used, "conversion": r.conversion} for r in rows])
per_day = table.groupby("day", as_index=False)[["requests", "issued", "re-sends", "validated"]].sum()
times = query(time_to_validate_by_day, filters)
per_day["ttv p50 (s)"] = [times[d].p50 if d in times else None for d in per_day["day"]]
per_day["ttv p95 (s)"] = [times[d].p95 if d in times else None for d in per_day["day"]]

st.subheader("Per day")
series = per_day.melt(id_vars="day", value_vars=["requests", "issued", "re-sends", "validated"],
                      var_name="figure", value_name="count")
st.altair_chart(alt.Chart(series).mark_line(point=True).encode(
    x=day_x(filters), y=count_y("count"), color=alt.Color("figure:N", title=None),
    tooltip=[day_tooltip(), "figure:N", "count:Q"]), width="stretch")
ttv = per_day.melt(id_vars="day", value_vars=["ttv p50 (s)", "ttv p95 (s)"], var_name="percentile",
                   value_name="seconds").dropna()
if ttv.empty:  # an empty chart would draw a lone "0.000000" axis
    st.caption("Time to validate: no code issued in this period has been used yet.")
else:
    st.altair_chart(alt.Chart(ttv).mark_line(point=True).encode(
        x=day_x(filters), y=alt.Y("seconds:Q", title="time to validate (s)"),
        color=alt.Color("percentile:N", title=None)), width="stretch")

st.subheader("Per day and action")
st.dataframe(table, hide_index=True, width="stretch", key="usage_table", column_config={
    "day": st.column_config.TextColumn("day"),
    "conversion": st.column_config.ProgressColumn("conversion", format="percent", min_value=0, max_value=1),
    **{c: st.column_config.NumberColumn(c, format="%d") for c in
       ("requests", "issued", "re-sends", "validations", "validated", "codes used")}})
csv_button(table, f"otp-usage-{filters.first}-{filters.last}.csv", "usage_csv")
