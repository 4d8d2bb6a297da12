"""What the three dashboard pages share: the sidebar filters, the KPI delta, the day axis, cached queries and the
CSV button."""
from __future__ import annotations

from datetime import timedelta
from typing import Callable
from zoneinfo import ZoneInfo

import altair as alt
import pandas as pd
import streamlit as st

from console_ui.state import runtime
from core.enums import Action, Channel
from core.reporting import rollups
from core.reporting.dashboards import MAX_DAYS, Filters

ALL = "All"
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


def sidebar_filters(prefix: str, *, channel: bool = True) -> Filters:
    """Date range, time zone, action and channel in the sidebar, the same on every dashboard page (a choice made
    on one stays on the others); the range defaults to the last 7 local days."""
    rt = runtime()
    zones = ZONES if rt.settings.timezone in ZONES else [rt.settings.timezone, *ZONES]
    with st.sidebar:
        st.subheader("Filters")
        tz = st.selectbox("Time zone", zones, key=_kept(prefix, "tz", rt.settings.timezone))
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
    return Filters(first, last, tz, None if action == ALL else action, None if chosen_channel == ALL else chosen_channel)


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


def query(fn: Callable, filters: Filters, *extra):  # type: ignore[no-untyped-def]
    """fn(conn, filters, *extra) on a read-only connection, cached for 30 s per database, filters and extra."""
    return _cached(f"{fn.__module__}.{fn.__qualname__}", str(runtime().db.url), filters, fn, tuple(extra))


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
    st.caption(f"{filters.first} to {filters.last} ({filters.day_count} day{'s' * (filters.day_count > 1)}, "
               f"days in {filters.tz}) · deltas against {before.first} to {before.last}")
