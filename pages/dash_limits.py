"""Rate limits: who is nearest the daily limit, what was refused and why, and when a user's block lifts."""
import altair as alt
import pandas as pd
import streamlit as st

from console_ui.state import can, gate, runtime
from console_ui.widgets import (breakdown, count_y, csv_button, day_tooltip, day_x, delta, org_name, period_caption,
                                query, sidebar_filters)
from core.admin.staff import PermissionDenied
from core.admin.unblock import UNBLOCKABLE, unblock
from core.issuing.counters import local_day
from core.issuing.entities import InvalidEntity, normalise_email, normalise_phone
from core.issuing.entities import user_key as customer_key
from core.reporting.dashboards import (nearest_daily_limit, refusals_by_day, refusals_by_type, top_refused_prefixes,
                                       top_refused_users, why_refused)
from core.reporting.security_events import event_counts, recent_events

identity = gate("status.view")
rt = runtime()
st.title("Rate limits")
if flash := st.session_state.pop("limits_flash", None):
    st.success(flash)
filters = sidebar_filters("limits", channel=False)
period_caption(filters)

LABELS = {"daily": "Daily limit", "action_daily": "Action cap", "code_sends": "Re-send cap",
          "validate": "Validate window", "lock": "Lock", "attempts": "Attempts (burned)"}
ABUSE_LABELS = {"destination": "Destination", "ip": "Client IP", "client": "API client", "prefix": "Number prefix",
                "budget": "Channel budget"}
now, before = query(refusals_by_type, filters), query(refusals_by_type, filters.previous())
kpis = st.columns(len(LABELS))
for column, (kind, label) in zip(kpis, LABELS.items()):
    column.metric(label, f"{now[kind]:,}", delta(now[kind], before[kind]), delta_color="inverse")

abuse = st.columns(len(ABUSE_LABELS))
for column, (kind, label) in zip(abuse, ABUSE_LABELS.items()):
    column.metric(label, f"{now.get(kind, 0):,}", delta(now.get(kind, 0), before.get(kind, 0)), delta_color="inverse")
breakdown(filters, "limits")

st.subheader("Security events")
with rt.read_db.connect() as conn:
    counts = event_counts(conn, start=filters.start, end=filters.end, action=filters.action, org_id=filters.org_id,
                          staff_id=filters.staff_id)
    events = recent_events(conn, start=filters.start, end=filters.end, action=filters.action, org_id=filters.org_id,
                           staff_id=filters.staff_id)
for column, (kind, count) in zip(st.columns(len(counts)), counts.items()):
    column.metric(kind.replace("_", " "), f"{count:,}")
EVENT_COLUMNS = ["when", "event", "user", "action", "detail"] + ["organisation"] * (filters.org_id is None)
events_table = pd.DataFrame([{"when": e.at, "event": e.kind, "user": e.user, "action": e.action, "detail": e.detail,
                              "organisation": org_name(e.org_id)} for e in events], columns=EVENT_COLUMNS)
st.dataframe(events_table, hide_index=True, width="stretch", key="limits_security_events",
             column_config={"when": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})

st.subheader("Nearest the daily limit today")
# Each organisation's customers count in its own day (its time zone): all organisations merge each one's today.
shown_orgs = list(rt.organisations()) if filters.org_id is None else [filters.org_id]
near = []
with rt.read_db.connect() as conn:
    for org in shown_orgs:
        today = local_day(rt.clock(), rt.org(org).tz)
        near += nearest_daily_limit(conn, day=today, limit=rt.org(org).settings.daily_limit, org_id=org,
                                    staff_id=filters.staff_id)
near = sorted(near, key=lambda n: (-n.count, n.user_key))[:20]
if filters.org_id is None:
    st.caption("Today in each organisation's time zone, where its limit's day begins.")
else:
    st.caption(f"Today is {today} in {rt.org(filters.org_id).timezone}, where the limit's day begins.")
NEAR_COLUMNS = ["user", "requests today", "limit", "share"] + ["organisation"] * (filters.org_id is None)
near_table = pd.DataFrame([{"user": n.user, "requests today": n.count, "limit": n.limit, "share": n.share,
                            "organisation": org_name(n.org_id)} for n in near], columns=NEAR_COLUMNS)
st.dataframe(near_table, hide_index=True, width="stretch", key="limits_near", column_config={
    "share": st.column_config.ProgressColumn("share of the limit", format="percent", min_value=0, max_value=1)})

by_day = pd.DataFrame(query(refusals_by_day, filters), columns=["day", "limit", "refused"])
if by_day.empty:
    st.info("No refusals in this period.")
else:
    st.altair_chart(alt.Chart(by_day).mark_bar().encode(
        x=day_x(filters), y=count_y("refused"), color=alt.Color("limit:N"),
        tooltip=[day_tooltip(), "limit:N", "refused:Q"]), width="stretch")

left, right = st.columns(2)
USER_COLUMNS = ["user", "refusals", "last", "limits"] + ["organisation"] * (filters.org_id is None)
users = pd.DataFrame([{"user": u.user, "refusals": u.refusals, "last": u.last_at, "limits": u.kinds,
                       "organisation": org_name(u.org_id)} for u in query(top_refused_users, filters)],
                     columns=USER_COLUMNS)
left.markdown("**Most refused users**")
left.dataframe(users, hide_index=True, width="stretch", key="limits_users", column_config={
    "last": st.column_config.DatetimeColumn("last refusal (UTC)", format="YYYY-MM-DD HH:mm")})
with left:
    csv_button(users, f"otp-refused-users-{filters.first}-{filters.last}.csv", "limits_users_csv")
prefixes = pd.DataFrame(query(top_refused_prefixes, filters), columns=["prefix", "refusals", "numbers"])
right.markdown("**Most refused number prefixes**")
right.dataframe(prefixes, hide_index=True, width="stretch", key="limits_prefixes")

st.subheader("Why was this user refused, and when does it lift?")
org_id = filters.org_id
if org_id is None:  # a customer is one organisation's: platform admins name which
    org_id = st.selectbox("Organisation", list(rt.organisations()), format_func=org_name, key="limits_user_org")
org = rt.org(org_id)
who = st.text_input("Phone number or email", key="limits_user").strip()
if who:
    try:
        user_key = customer_key(org_id, "EMAIL", normalise_email(who)) if "@" in who else \
            customer_key(org_id, "MOBILE", normalise_phone(who, region=org.region, strict=False))
    except InvalidEntity as exc:
        st.error(f"Not a phone number or email: {exc}")
        st.stop()
    moment = rt.clock()
    with rt.read_db.connect() as conn:
        limits = why_refused(conn, org.settings, user_key=user_key, now=moment, org_id=org_id,
                             staff_id=filters.staff_id,
                             configs={a.value: c for a, c in rt.active_configs(org_id).items()})
    st.caption("The same limits the engine counts, for a code sent to this user on each channel its action "
               "enables; the client IP and API client limits depend on the caller and are not shown.")
    if not limits.blocks:
        st.success(f"{limits.user} is not blocked by any limit right now.")
    else:
        st.dataframe(pd.DataFrame([{"limit": LABELS.get(b.limit_type, ABUSE_LABELS.get(b.limit_type, b.limit_type)),
                                    "refuses": b.refuses, "action": b.action or "all", "channel": b.channel or "",
                                    "why": b.detail, "used": f"{b.used} of {b.limit}", "lifts at (UTC)": b.lifts_at,
                                    "lifts in (min)": round((b.lifts_at - moment).total_seconds() / 60, 1)
                                    if b.lifts_at else None} for b in limits.blocks]),
                     hide_index=True, width="stretch", key="limits_blocks", column_config={
                         "lifts at (UTC)": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
    if limits.recent:
        st.markdown("**Newest refusals**")
        st.dataframe(pd.DataFrame(limits.recent, columns=["at", "limit", "action"]), hide_index=True,
                     width="stretch", key="limits_recent",
                     column_config={"at": st.column_config.DatetimeColumn("at (UTC)", format="YYYY-MM-DD HH:mm:ss")})
    liftable = [b for b in limits.blocks if b.limit_type in UNBLOCKABLE]
    if can("config.edit") and liftable:
        with st.form("limits_unblock_form"):
            st.markdown("**Unblock** (admins; kept in the audit log)")
            choice = st.selectbox("Limit to lift", range(len(liftable)), key="limits_unblock_pick",
                                  format_func=lambda i: f"{LABELS[liftable[i].limit_type]} · {liftable[i].action or 'all actions'}")
            reason = st.text_input("Why", key="limits_unblock_reason")
            submitted = st.form_submit_button("Unblock", key="limits_unblock")
        if submitted:
            block = liftable[choice]
            try:
                with rt.session() as session:
                    unblock(session, actor=identity, user_key=user_key, limit_type=block.limit_type,
                            action=block.action, reason=reason, now=rt.clock(), tz=org.tz, org_id=org_id)
            except (ValueError, PermissionDenied) as exc:
                st.error(f"Not unblocked: {exc}")
            else:
                st.session_state["limits_flash"] = f"Lifted the {LABELS[block.limit_type].lower()} for {limits.user}."
                st.cache_data.clear()
                st.rerun()
