"""Outbox (development only): what the outbox gateway 'sent', newest first."""
import pandas as pd
import streamlit as st

from console_ui.state import gate, runtime, selected_org
from core.services.trials import outbox_messages

rt = runtime()
identity = gate("outbox.view")
org_id = selected_org()
st.title("Outbox")
st.caption("Development mode only: these messages hold readable codes and never leave this machine.")
recipient = st.text_input("Filter by recipient", key="outbox_recipient")
messages = outbox_messages(rt, actor=identity, recipient=recipient, org_id=org_id)
if not messages:
    st.info("No messages yet.")
else:
    st.dataframe(pd.DataFrame([{"id": m.id, "sent": m.created_at, "channel": m.channel, "to": m.recipient,
                                "subject": m.subject, "message": m.body} for m in messages]),
                 hide_index=True, width="stretch", key="outbox_table",
                 column_config={"sent": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
                                "message": st.column_config.TextColumn(width="large")})
