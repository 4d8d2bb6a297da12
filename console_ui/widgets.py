"""What the three dashboard pages share: the sidebar filters (the organisation among them), the KPI delta, the day
axis, cached queries, the per-organisation breakdown and the CSV button."""
from __future__ import annotations

from datetime import timedelta
from typing import Callable
from zoneinfo import ZoneInfo

import altair as alt
import pandas as pd
import streamlit as st

from console_ui.state import is_platform_admin, me, runtime, selected_org
from core.enums import Action, Channel
from core.reporting import access, rollups
from core.reporting.access import NotAllowed
from core.reporting.dashboards import MAX_DAYS, Filters, org_breakdown

ALL = "All"
ALL_ORGS = "All organisations"
ZONES = ["UTC", "Asia/Kolkata", "Asia/Ho_Chi_Minh", "Asia/Singapore", "Europe/London", "America/New_York"]


def _kept(prefix: str, name: str, default: object) -> str:
    """The widget key for filter `name` on this page, given the value the filter had on any dashboard page.

    Streamlit forgets a widget's state when a page without it runs, so each filter's value is also kept under
    a plain session key shared by the dashboards; a page's widget starts from it when it (re)appears.
    """
    store, widget = f"dash_filter_{name}", f"{prefix}_{name}"
    if store not in st.session_state:
        st.session_state[store] = default
    if widget not in st.session_state:
        st.session_state[widget] = st.session_state[store]
    return widget


def _keep(name: str, value: object) -> None:
    st.session_state[f"dash_filter_{name}"] = value


def dashboard_org(prefix: str) -> int | None:
    """The organisation the dashboards show: the selected one, or (platform admins only) None for all of them,
    chosen in the sidebar; core checks the choice again (core.reporting.access) whatever is picked here."""
    org = selected_org()
    if not is_platform_admin() or len(runtime().organisations()) < 2:
        return org
    with st.sidebar:
        mine = f"This organisation ({runtime().org(org).name})"
        scope = st.radio("Organisations", [mine, ALL_ORGS], key=_kept(prefix, "orgs", mine))
        _keep("orgs", scope)
    return None if scope == ALL_ORGS else org


def sidebar_filters(prefix: str, *, channel: bool = True) -> Filters:
    """Organisation (platform admins: or all of them), date range, time zone, action and channel in the sidebar,
    the same on every dashboard page (a choice made on one stays on the others); the range defaults to the last 7
    local days and the time zone to the organisation's (the service's for all organisations)."""
    rt = runtime()
    org_id = dashboard_org(prefix)
    own_zone = rt.settings.timezone if org_id is None else rt.org(org_id).timezone
    zones = ZONES if own_zone in ZONES else [own_zone, *ZONES]
    with st.sidebar:
        st.subheader("Filters")
        if st.session_state.get("dash_filter_tz_org", org_id) != org_id:  # another organisation: its own zone
            st.session_state["dash_filter_tz"] = own_zone
            st.session_state.pop(f"{prefix}_tz", None)
        st.session_state["dash_filter_tz_org"] = org_id
        tz = st.selectbox("Time zone", zones, key=_kept(prefix, "tz", own_zone))
        _keep("tz", tz)
        today = rt.clock().astimezone(ZoneInfo(tz)).date()
        picked = st.date_input("Days", max_value=today + timedelta(days=1),
                               key=_kept(prefix, "days", (today - timedelta(days=6), today)))
        if isinstance(picked, (tuple, list)) and len(picked) == 2:  # not while only the first day is picked
            _keep("days", tuple(picked))
        action = st.selectbox("Action", [ALL, *(a.value for a in Action)], key=_kept(prefix, "action", ALL))
        _keep("action", action)
        if channel:
            chosen_channel = st.selectbox("Channel", [ALL, *(c.value for c in Channel)],
                                          key=_kept(prefix, "channel", ALL))
            _keep("channel", chosen_channel)
        else:
            chosen_channel = ALL
    first, last = (picked if isinstance(picked, (tuple, list)) and len(picked) == 2
                   else ((picked[0], picked[0]) if isinstance(picked, (tuple, list)) and picked else (picked, picked)))
    if (last - first).days + 1 > MAX_DAYS:
        st.sidebar.warning(f"At most {MAX_DAYS} days: showing the last {MAX_DAYS}.")
        first = last - timedelta(days=MAX_DAYS - 1)
    allowed(org_id)
    return Filters(first, last, tz, None if action == ALL else action, None if chosen_channel == ALL else chosen_channel,
                   org_id=org_id, staff_id=me().id)


def rollups_up_to_date() -> None:
    """Bring the dashboard rollups up to date now, saying so when there is something to do (the first time on a
    large database reads every raw row once); each query would otherwise do it silently."""
    engine = runtime().read_db
    if rollups.needs_refresh(engine):
        with st.spinner("Bringing the dashboard rollups up to date with the newest rows…"):
            rollups.refresh(engine)


@st.cache_data(ttl=30, show_spinner=False)
def _cached(name: str, database: str, filters: Filters, _query: Callable, extra: tuple = ()):  # type: ignore[no-untyped-def]
    with runtime().read_db.connect() as conn:
        return _query(conn, filters, *extra)


def allowed(org_id: int | None) -> None:
    """Stop the page with an error unless the signed-in person may read org_id's figures now (core decides)."""
    try:
        with runtime().read_db.connect() as conn:
            access.check(conn, staff_id=me().id, org_id=org_id)
    except NotAllowed as exc:
        st.error(f"Not shown: {exc}.")
        st.stop()


def query(fn: Callable, filters: Filters, *extra):  # type: ignore[no-untyped-def]
    """fn(conn, filters, *extra) on a read-only connection, cached for 30 s per database, filters and extra; the
    signed-in person's right to the filters' organisation is checked on every call, cached or not."""
    allowed(filters.org_id)
    return _cached(f"{fn.__module__}.{fn.__qualname__}", str(runtime().db.url), filters, fn, tuple(extra))


def org_name(org_id: int) -> str:
    found = runtime().organisations().get(org_id)
    return found.name if found else f"#{org_id}"


def breakdown(filters: Filters, key: str) -> None:
    """The all-organisations view's table: each organisation's headline figures (their sums are the KPIs above),
    with its CSV. Nothing when the filters are of one organisation."""
    if filters.org_id is not None:
        return
    rows = query(org_breakdown, filters)
    st.subheader("Per organisation")
    table = pd.DataFrame([{"organisation": org_name(r.org_id), "requests": r.requests, "issued": r.issued,
                           "validated": r.validated, "conversion": r.conversion, "messages": r.messages,
                           "delivered": r.delivered, "failed": r.failed, "delivery rate": r.delivery_rate,
                           "refusals": r.refusals} for r in rows],
                         columns=["organisation", "requests", "issued", "validated", "conversion", "messages",
                                  "delivered", "failed", "delivery rate", "refusals"])
    st.dataframe(table, hide_index=True, width="stretch", key=f"{key}_orgs", column_config={
        "conversion": st.column_config.ProgressColumn("conversion", format="percent", min_value=0, max_value=1),
        "delivery rate": st.column_config.ProgressColumn("delivery rate", format="percent", min_value=0,
                                                         max_value=1)})
    csv_button(table, f"otp-organisations-{filters.first}-{filters.last}.csv", f"{key}_orgs_csv")


def delta(now: float | None, before: float | None, *, percent: bool = False) -> str | None:
    """The change against the previous period as st.metric shows it; None when there is nothing to compare, and
    "0" when nothing changed (st.metric greys exactly that string, where "+0" would be a red or green arrow)."""
    if now is None or before is None:
        return None
    change = now - before
    if abs(change) < (0.0005 if percent else 1e-9):  # what the format below would print as zero
        return "0"
    if percent:
        return f"{change * 100:+.1f} pp"
    return f"{change:+,.0f}" if float(change).is_integer() else f"{change:+,.2f}"


def day_x(filters: Filters, field: str = "day") -> alt.X:
    """The day axis of every dashboard chart: one label per day in one format ("29 Nov"; Vega's default mixed
    "Nov 29", "Mon 30" and "December"), under the day's bar or point rather than at its edge, read as the UTC
    calendar date the query returned so the browser's own time zone cannot shift it."""
    return alt.X(f"{field}:O", timeUnit="utcyearmonthdate", title=None,
                 axis=alt.Axis(labelExpr="utcFormat(datum.value, '%d %b')", labelAngle=0,
                               labelOverlap="parity" if filters.day_count > 14 else False))


def count_y(field: str, title: str | None = None) -> alt.Y:
    """A y axis of counts: whole-number ticks only (Vega's default put 0.2, 0.4 ... under a count of 2)."""
    return alt.Y(f"{field}:Q", title=title or field, axis=alt.Axis(tickMinStep=1, format="d"))


def day_tooltip(field: str = "day") -> alt.Tooltip:
    return alt.Tooltip(f"{field}:O", title="day", timeUnit="utcyearmonthdate", format="%d %b %Y")


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def csv_button(frame: pd.DataFrame, name: str, key: str) -> None:
    st.download_button("Download CSV", frame.to_csv(index=False).encode(), file_name=name, mime="text/csv",
                       key=key, disabled=frame.empty)


def period_caption(filters: Filters) -> None:
    before = filters.previous()
    who = "" if len(runtime().organisations()) < 2 else \
        f"{ALL_ORGS if filters.org_id is None else org_name(filters.org_id)} · "
    st.caption(f"{who}{filters.first} to {filters.last} ({filters.day_count} day{'s' * (filters.day_count > 1)}, "
               f"days in {filters.tz}) · deltas against {before.first} to {before.last}")
