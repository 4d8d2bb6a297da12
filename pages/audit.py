"""Audit log: who changed what, when and why."""
import pandas as pd
import streamlit as st

from console_state import gate, runtime
from core.audit import recent

rt = runtime()
gate("templates.approve")
st.title("Audit log")
prefix = st.selectbox("Show", ["everything", "template:", "config:", "staff:", "client:"], key="audit_filter")
with rt.session() as db:
    rows = recent(db, target_prefix=None if prefix == "everything" else prefix)
st.dataframe(pd.DataFrame([{"when": r.at, "who": r.actor, "what": r.action, "target": r.target, "why": r.reason,
                            "detail": r.detail} for r in rows]),
             hide_index=True, width="stretch", key="audit_table",
             column_config={"when": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
