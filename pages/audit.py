"""Audit log: who changed what, when and why, filtered by kind, person and days, and exported as CSV."""
from datetime import datetime, time, timedelta, timezone

import pandas as pd
import streamlit as st

from console_ui.state import gate, runtime, selected_org
from core.admin.audit import KINDS, actors, platform_rows_for, search, to_csv
from core.clock import utcnow

ALL = "all"
rt = runtime()
identity = gate("templates.approve")
org_id = selected_org()
with rt.session() as db:  # platform rows name people and organisations of every organisation: core says which
    platform_rows = platform_rows_for(db, staff_id=identity.id, org_id=org_id)
st.title("Audit log")
st.caption("Sign-ins, test sends, gateway, configuration, template, staff and API-client changes. Destinations "
           "are masked and credentials shown as hints; no code or password is ever recorded.")
if platform_rows == "members":
    st.caption("Sign-ins and sign-outs: those of this organisation's own staff (and of no one outside it).")
today = utcnow().date()
with rt.session() as db:
    people = actors(db, org_id=org_id, platform=platform_rows)
a, b, c = st.columns([2, 2, 3])
kind = a.selectbox("Kind", [ALL, *KINDS], key="audit_kind", format_func=lambda k: "everything" if k == ALL else KINDS[k])
actor = b.selectbox("Who", [ALL, *people], key="audit_actor", format_func=lambda p: "everyone" if p == ALL else p)
days = c.date_input("Days (UTC)", (today - timedelta(days=29), today), max_value=today, key="audit_days")
first, last = (days[0], days[-1]) if isinstance(days, (tuple, list)) and days else (days, days)
with rt.session() as db:
    rows = search(db, kind=None if kind == ALL else kind, actor=None if actor == ALL else actor,
                  start=datetime.combine(first, time(), timezone.utc),
                  end=datetime.combine(last + timedelta(days=1), time(), timezone.utc), org_id=org_id,
                  platform=platform_rows)
st.dataframe(pd.DataFrame([{"when": r.at, "who": r.actor, "what": r.action, "target": r.target, "why": r.reason or "",
                            "detail": r.detail or ""} for r in rows], columns=["when", "who", "what", "target", "why", "detail"]),
             hide_index=True, width="stretch", key="audit_table",
             column_config={"when": st.column_config.DatetimeColumn("when (UTC)", format="YYYY-MM-DD HH:mm:ss")})
st.caption(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, newest first (at most 1,000).")
st.download_button("Download CSV", to_csv(rows).encode(), file_name=f"otp-audit-{first}-{last}.csv",
                   mime="text/csv", key="audit_csv", disabled=not rows)
