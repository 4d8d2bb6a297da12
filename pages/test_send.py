"""Test send: the generate request's fields, sent through the same engine call as the API."""
import pandas as pd
import streamlit as st

from console_ui.state import gate, runtime, selected_org
from core.enums import Action, Channel, EntityType
from core.errors import OtpError
from core.services.trials import outbox_messages, trial_dry_run, trial_generate, trial_validate

rt = runtime()
identity = gate("test.send")
org_id = selected_org()
st.title("Test send")

with st.form("test_send"):
    a, b, c = st.columns(3)
    entity_type = a.selectbox("Entity type", [e.value for e in EntityType], key="ts_entity_type")
    entity_value = b.text_input("Mobile number or email", key="ts_entity_value")
    action = c.selectbox("Action", [x.value for x in Action], key="ts_action")
    channels = st.multiselect("Channels (none: the action's policy decides)", [ch.value for ch in Channel],
                              key="ts_channels")
    destination = st.text_input("Send channels to (empty: the entity value; email channels need an email)",
                                key="ts_destination")
    email_destination = st.text_input("Email channel address (if different)", key="ts_email_destination")
    with st.expander("Templates in the request body (optional)"):
        sms_template = st.text_area("SMS template", key="ts_sms_template")
        email_subject = st.text_input("Email subject", key="ts_email_subject")
        email_body = st.text_area("Email body", key="ts_email_body")
        whatsapp_name = st.text_input("WhatsApp template name", key="ts_whatsapp_name")
        zalo_id = st.text_input("Zalo template identifier", key="ts_zalo_id")
    dry = st.checkbox("Dry run: render and check limits without sending or counting", key="ts_dry")
    submitted = st.form_submit_button("Send test OTP", type="primary", key="ts_submit")

if submitted:
    payload: dict = {"entityType": entity_type, "entityValue": entity_value, "action": action}
    if channels:
        phone_to = destination.strip() or entity_value
        email_to = email_destination.strip() or destination.strip() or entity_value
        payload["channels"] = [{"type": ch, "value": email_to if ch == "EMAIL" else phone_to} for ch in channels]
    if sms_template.strip():
        payload["template"] = sms_template
    if email_body.strip():
        payload["emailTemplate"] = {"subject": email_subject, "body": email_body}
    if whatsapp_name.strip():
        payload["whatsappTemplateName"] = whatsapp_name
    if zalo_id.strip():
        payload["zaloTemplateIdentifier"] = zalo_id
    st.session_state["ts_last_payload"] = payload
    try:
        if dry:
            preview = trial_dry_run(rt, actor=identity, payload=payload, org_id=org_id)
            st.success(f"Dry run: nothing was sent or counted. Daily use {preview.daily_used} of "
                       f"{preview.daily_limit}; {'the live code would be re-sent' if preview.would_resend else 'a new code would be issued'}.")
            for problem in preview.problems:
                st.warning(f"{problem.code}: {problem.message}")
            for message in preview.messages:
                st.markdown(f"**{message.channel.value}** to {message.destination}")
                st.caption(f"Template: {preview.template_origins[message.channel.value]} · "
                           f"Gateway: {preview.gateways[message.channel.value]}")
                if message.subject:
                    st.text(f"Subject: {message.subject}")
                st.code(message.body or message.text or f"template {message.whatsapp_template_name or message.zalo_template_id}",
                        language=None, wrap_lines=True)  # message text, not Python
        else:
            result = trial_generate(rt, actor=identity, payload=payload, org_id=org_id)
            st.session_state["ts_last_result"] = result
    except OtpError as exc:
        st.session_state.pop("ts_last_result", None)
        st.error(f"Refused with HTTP {exc.http_status}")
        st.dataframe(pd.DataFrame([{"code": p.code, "message": p.message} for p in exc.problems]),
                     hide_index=True, width="stretch", key="ts_errors")

result = st.session_state.get("ts_last_result")
if result is not None:
    st.subheader("Result")
    m1, m2 = st.columns(2)
    m1.metric("createdId", result.created_id)
    m2.metric("Code", "re-sent" if result.resent else "new")
    for warning in result.warnings:
        st.warning(f"{warning.code}: {warning.message}")
    st.dataframe(pd.DataFrame([{"channel": d.channel, "to": d.destination, "gateway": d.gateway, "status": d.status,
                                "error": d.error} for d in result.deliveries]),
                 hide_index=True, width="stretch", key="ts_deliveries")
    if rt.settings.is_development:
        # Only deliveries the outbox gateway took are in the outbox: a provider's message reached a real phone.
        kept = outbox_messages(rt, actor=identity, delivery_ids=[d.delivery_id for d in result.deliveries], org_id=org_id)
        if kept:
            st.markdown("**Outbox: what the recipient sees** (development only)")
        else:
            st.caption("Nothing of this send is in the outbox: it went through the gateways above.")
        for message in kept:
            with st.container(border=True):
                st.caption(f"{message.channel} to {message.recipient}")
                if message.subject:
                    st.text(f"Subject: {message.subject}")
                st.text(message.body)

    payload = st.session_state["ts_last_payload"]
    with st.form("ts_validate"):
        code = st.text_input("Try a code", key="ts_code")
        check = st.form_submit_button("Validate", key="ts_validate_submit")
    if check:
        try:
            outcome = trial_validate(rt, actor=identity, payload={**{k: payload[k] for k in
                                                                    ("entityType", "entityValue", "action")},
                                                                 "code": code}, org_id=org_id)
        except OtpError as exc:
            st.error("; ".join(f"{p.code}: {p.message}" for p in exc.problems))
        else:
            if outcome.valid:
                st.success("Valid: the code is now used.")
            else:
                st.error("; ".join(f"{w.code}: {w.message}" for w in outcome.warnings))
