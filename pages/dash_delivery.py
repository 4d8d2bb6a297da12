"""Delivery: per channel and gateway, what was sent, delivered and failed, how fast, and one request's story."""
import altair as alt
import pandas as pd
import streamlit as st

from console_ui.state import gate, runtime
from console_ui.widgets import (breakdown, count_y, csv_button, day_tooltip, day_x, delta, pct, period_caption, query,
                                rollups_up_to_date, sidebar_filters)
from core.issuing.entities import InvalidEntity, normalise_email, normalise_phone
from core.reporting.dashboards import (delivery_by_day, delivery_summary, failures_by_error, find_requests,
                                       live_delivery, request_timeline)

gate("status.view")
rt = runtime()
st.title("Delivery")
filters = sidebar_filters("delivery")
rollups_up_to_date()
period_caption(filters)


@st.fragment(run_every="15s")
def live_panel() -> None:
    """The last 15 minutes, refreshed on its own every 15 seconds."""
    with rt.read_db.connect() as conn:
        live = live_delivery(conn, now=rt.clock(), minutes=15, org_id=filters.org_id, staff_id=filters.staff_id)
    # The sidebar's filters do not apply here: say so, or a COUPON view shows another action's EMAIL.
    st.markdown("**Live: the last 15 minutes, every action** (the filters do not apply; refreshes every 15 s)")
    if not live:
        st.caption("No messages in the last 15 minutes.")
        return
    for column, row in zip(st.columns(len(live)), live):
        column.metric(row.channel, f"{row.messages:,} sent", f"{row.failed} failed" if row.failed else None,
                      delta_color="inverse" if row.failed else "off")


with st.container(border=True):
    live_panel()

now, before = query(delivery_summary, filters), query(delivery_summary, filters.previous())


def total(rows, field):  # type: ignore[no-untyped-def]
    return sum(getattr(r, field) for r in rows)


messages, delivered, failed = total(now, "messages"), total(now, "delivered"), total(now, "failed")
b_messages, b_delivered, b_failed = total(before, "messages"), total(before, "delivered"), total(before, "failed")
rate = delivered / messages if messages else None
b_rate = b_delivered / b_messages if b_messages else None
fail_rate = failed / messages if messages else None
b_fail_rate = b_failed / b_messages if b_messages else None
kpis = st.columns(4)
kpis[0].metric("Messages", f"{messages:,}", delta(messages, b_messages))
kpis[1].metric("Delivered", pct(rate), delta(rate, b_rate, percent=True))
kpis[2].metric("Failed", f"{failed:,}", delta(failed, b_failed), delta_color="inverse")
kpis[3].metric("Failure rate", pct(fail_rate), delta(fail_rate, b_fail_rate, percent=True), delta_color="inverse")
breakdown(filters, "delivery")

if not now:
    st.info("No deliveries in this period.")
else:
    table = pd.DataFrame([{"channel": r.channel, "gateway": r.gateway, "messages": r.messages, "queued": r.queued,
                           "sent (no receipt)": r.sent, "delivered": r.delivered, "failed": r.failed,
                           "delivery rate": r.delivery_rate, "p50 ms": r.p50_ms, "p95 ms": r.p95_ms,
                           "p99 ms": r.p99_ms} for r in now])
    st.subheader("Per channel and gateway")
    st.dataframe(table, hide_index=True, width="stretch", key="delivery_table", column_config={
        "delivery rate": st.column_config.ProgressColumn("delivery rate", format="percent", min_value=0, max_value=1),
        **{c: st.column_config.NumberColumn(c, format="%.0f", help="gateway latency, nearest-rank percentile, "
                                            "shown as the upper edge of its histogram bin (at most 6.4% above)")
           for c in ("p50 ms", "p95 ms", "p99 ms")}})
    csv_button(table, f"otp-delivery-{filters.first}-{filters.last}.csv", "delivery_csv")

    days = pd.DataFrame([vars(d) for d in query(delivery_by_day, filters)])
    # One above the other: beside each other, the failure reasons' labels were cut off.
    st.altair_chart(alt.Chart(days).mark_bar().encode(
        x=day_x(filters), y=count_y("messages"), color=alt.Color("channel:N"),
        tooltip=[day_tooltip(), "channel:N", "messages:Q", "delivered:Q", "failed:Q"]), width="stretch")
    failures = pd.DataFrame([vars(f) for f in query(failures_by_error, filters)])
    if failures.empty:
        st.success("No failed deliveries in this period.")
    else:
        st.markdown("**Why deliveries failed**")
        st.altair_chart(alt.Chart(failures).mark_bar().encode(
            y=alt.Y("error:N", sort="-x", title=None, axis=alt.Axis(labelLimit=0)),
            x=alt.X("count:Q", title="failed messages", axis=alt.Axis(tickMinStep=1, format="d")),
            color=alt.Color("channel:N"), tooltip=["channel:N", "gateway:N", "error:N", "count:Q"]), width="stretch")

st.subheader("One request")
st.caption("Search by createdId (the request id) or by a recipient's full number or email. Recipients are masked "
           "and codes are never shown.")
search = st.text_input("createdId or recipient", key="delivery_search").strip()
if search:
    with rt.read_db.connect() as conn:
        if search.isdigit() and len(search) <= 9:
            ids = [int(search)]
        else:
            try:
                region = rt.settings.default_region if filters.org_id is None else rt.org(filters.org_id).region
                recipient = normalise_email(search) if "@" in search else normalise_phone(
                    search, region=region, strict=False)
            except InvalidEntity as exc:
                st.error(f"Not a request id, phone number or email: {exc}")
                recipient = ""
            ids = find_requests(conn, recipient=recipient, org_id=filters.org_id,
                                staff_id=filters.staff_id) if recipient else []
        if len(ids) > 1:
            picked = st.selectbox(f"{len(ids)} requests to this recipient, newest first", ids, key="delivery_pick")
            ids = [picked]
        timeline = request_timeline(conn, ids[0], org_id=filters.org_id, staff_id=filters.staff_id) if ids else None
    if timeline is None:
        st.warning("No such request.")
    else:
        st.markdown(f"Request **{timeline.request_id}** · {timeline.action} · {timeline.kind} · user {timeline.user}")
        st.dataframe(pd.DataFrame([vars(e) for e in timeline.events]), hide_index=True, width="stretch",
                     key="delivery_timeline", column_config={
                         "at": st.column_config.DatetimeColumn("at (UTC)", format="YYYY-MM-DD HH:mm:ss.SSS")})
