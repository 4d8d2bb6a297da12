"""Gateways: which provider sends each channel; credentials can be replaced but are never shown back."""
import json

import pandas as pd
import streamlit as st

from console_state import gate, runtime
from core.enums import Channel
from core.gateway_configs import OUTBOX, PROVIDERS, GatewayConfigError, list_gateways, save_gateway
from core.models import GatewayConfigBase

rt = runtime()
identity = gate("config.edit")
st.title("Gateways")
if flash := st.session_state.pop("gw_flash", None):
    st.success(flash)

with rt.session() as db:
    configured = list_gateways(db, rt.box)
if configured:
    st.dataframe(pd.DataFrame([{"name": g.name, "channel": g.channel, "provider": g.provider, "endpoint": g.endpoint,
                                "sender": g.sender, "default": g.is_default, "enabled": g.enabled,
                                "credentials": g.credentials_hint or "—"} for g in configured]),
                 hide_index=True, width="stretch", key="gw_table")
else:
    st.info("No gateway configured: every channel uses the settings' choice "
            f"({', '.join(f'{c.value}={g.name if g else chr(8212)}' for c, g in rt.gateways.items())}).")

st.subheader("Add or change a gateway")
existing = {g.name: g for g in configured}
chosen = st.selectbox("Gateway", ["(new)", *existing], key="gw_pick")
current = existing.get(chosen)
channel = st.selectbox("Channel", [c.value for c in Channel], key="gw_channel",
                       index=[c.value for c in Channel].index(current.channel) if current else 0)
providers = [OUTBOX, *[name for name, (_cls, ch) in PROVIDERS.items() if ch.value == channel]]
with st.form("gw_form"):
    name = st.text_input("Name", value=current.name if current else "", key="gw_name")
    provider = st.selectbox("Provider", providers, key="gw_provider",
                            index=providers.index(current.provider) if current and current.provider in providers else 0)
    endpoint = st.text_input("Endpoint (URL, or host:port for SMTP; empty: the provider's public API)",
                             value=current.endpoint if current else "", key="gw_endpoint")
    sender = st.text_input("Sender (number, address, or WhatsApp phone-number id)",
                           value=current.sender if current else "", key="gw_sender")
    options = st.text_area("Options (JSON: timeout_seconds, attempts, backoff_seconds, security, sender_name, "
                           "headers, body, status_callback...)", value=current.options if current else "{}",
                           key="gw_options")
    credentials = st.text_area("Credentials (JSON; leave empty to keep the stored ones)", value="",
                               key="gw_credentials", placeholder='{"account_sid": "...", "auth_token": "..."}')
    default = st.checkbox("Default gateway for this channel", value=current.is_default if current else True,
                          key="gw_default")
    enabled = st.checkbox("Enabled", value=current.enabled if current else True, key="gw_enabled")
    reason = st.text_input("Why this change (kept in the audit log)", key="gw_reason")
    saved = st.form_submit_button("Save gateway", type="primary", key="gw_save")

if saved:
    try:
        secrets_ = json.loads(credentials) if credentials.strip() else None
        if secrets_ is not None and not isinstance(secrets_, dict):
            raise GatewayConfigError("credentials must be a JSON object")
        with rt.session() as db:
            save_gateway(db, rt.box, actor=identity, credentials=secrets_, reason=reason, config=GatewayConfigBase(
                name=name.strip(), channel=channel, provider=provider, endpoint=endpoint.strip(),
                sender=sender.strip(), options=options or "{}", is_default=default, enabled=enabled))
    except json.JSONDecodeError as exc:
        st.error(f"Credentials are not valid JSON: {exc.msg}")
    except GatewayConfigError as exc:
        st.error(f"Not saved: {exc}")
    else:
        rt.configuration_changed()
        st.session_state["gw_flash"] = f"Saved gateway {name.strip()}."
        st.rerun()
st.caption("Per action, choose gateways and a failover plan on the OTP configuration page. Receipts: "
           "POST /v2/otp/receipts/<gateway name>, signed by the provider.")
