"""Gateways: which provider sends each channel, a form per provider, and a real test message through one."""
import pandas as pd
import streamlit as st

from console_ui.state import form_needs_loading, gate, runtime, selected_org
from core.admin.gateway_forms import PROVIDER_FIELDS, GatewayForm, providers_for, save_gateway_form, stored_form
from core.admin.gateways import GatewayRefused, list_gateways
from core.enums import Channel
from core.services.trials import send_gateway_test

rt = runtime()
identity = gate("config.edit")
org_id = selected_org()
st.title("Gateways")
# Messages belong to the run right after the action that produced them: popped, never shown twice.
if flash := st.session_state.pop("gw_flash", None):
    st.success(flash)
problems: dict[str, list[str]] = st.session_state.pop("gw_problems", {})
NEW = "(new)"


def state_key(field_key: str) -> str:
    return "gw_f_" + field_key.replace(".", "_")


with rt.session() as db:
    configured = list_gateways(db, rt.box, org_id=org_id)
if configured:
    st.dataframe(pd.DataFrame([{"name": g.name, "channel": g.channel, "provider": g.provider, "endpoint": g.endpoint,
                                "sender": g.sender, "default": g.is_default, "enabled": g.enabled,
                                "credentials": g.credentials_hint or "—"} for g in configured]),
                 hide_index=True, width="stretch", key="gw_table")
    st.caption("Which gateway each action really uses, and why, is on the Status page.")
    if org_id != 1:  # the default organisation's gateways keep their receipt URLs without a slug
        st.caption(f"Delivery receipts of this organisation's gateways: /v2/otp/receipts/{rt.org(org_id).slug}/"
                   "<gateway name>.")
else:
    st.info("No gateway configured: every channel uses the settings' choice (OTP_GATEWAY_<CHANNEL>).")


def load(name: str) -> None:
    """Fill the form with what is stored for name (secrets stay empty: only their hints are shown)."""
    with rt.session() as db:
        stored = stored_form(db, rt.box, name, org_id=org_id) if name != NEW else None
    form = stored.form if stored else GatewayForm("", Channel.SMS.value, "outbox")
    st.session_state.update({"gw_name": form.name, "gw_channel": form.channel, "gw_provider": form.provider,
                             "gw_change_provider": False, "gw_advanced": form.advanced_options,
                             "gw_default": form.is_default, "gw_enabled": form.enabled, "gw_reason": "",
                             "gw_hints": stored.hints if stored else {}, "gw_loaded": name})
    for fields in PROVIDER_FIELDS.values():
        for f in fields:
            st.session_state[state_key(f.key)] = "" if f.is_secret else form.values.get(
                f.key, f.choices[0] if f.choices else "")
    st.session_state.pop("gw_test_result", None)


def save() -> None:
    """The Save button's callback: all of the form is saved, or nothing and every problem is listed."""
    state = st.session_state
    editing = state["gw_pick"] if state["gw_pick"] != NEW else None
    form = GatewayForm(name=state["gw_name"], channel=state["gw_channel"], provider=state["gw_provider"],
                       values={f.key: state.get(state_key(f.key), "") for f in PROVIDER_FIELDS[state["gw_provider"]]},
                       advanced_options=state["gw_advanced"], is_default=state["gw_default"],
                       enabled=state["gw_enabled"], editing=editing, change_provider=state["gw_change_provider"])
    try:
        with rt.session() as db:
            saved = save_gateway_form(db, rt.box, actor=identity, form=form, reason=state["gw_reason"], org_id=org_id)
    except GatewayRefused as refused:
        state["gw_problems"] = refused.problems  # what was typed stays in the form
    else:
        rt.configuration_changed()
        state["gw_flash"] = f"Saved gateway {saved.name} ({saved.provider} for {saved.channel})."
        state["gw_pick"] = saved.name
        state["gw_loaded"] = None  # reload what is stored: secrets back to hints, the reason cleared


def test_message() -> None:
    state = st.session_state
    try:
        state["gw_test_result"] = send_gateway_test(rt, actor=identity, gateway_name=state["gw_pick"],
                                                    destination=state["gw_test_to"],
                                                    template=state.get("gw_test_template", ""), org_id=org_id)
    except ValueError as exc:
        state["gw_test_result"] = str(exc)


def shown(key: str) -> None:
    for problem in problems.pop(key, []):
        st.error(problem, icon=":material/error:")


st.subheader("Add or change a gateway")
chosen = st.selectbox("Gateway", [NEW, *(g.name for g in configured)], key="gw_pick")
if form_needs_loading("gw_loaded", chosen, "gw_enabled"):
    load(chosen)
editing = chosen != NEW
if problems:
    count = sum(len(found) for found in problems.values())
    st.error(f"Not saved: {count} problem{'s' if count > 1 else ''}, shown next to the fields. Nothing was changed.")

st.text_input("Name", key="gw_name", disabled=editing,
              help="A gateway's name is how actions and receipt URLs refer to it; it cannot be changed.")
shown("name")
locked = editing and not st.session_state["gw_change_provider"]
left, right = st.columns(2)
channel = Channel(left.selectbox("Channel", [c.value for c in Channel], key="gw_channel", disabled=locked))
shown("channel")
providers = providers_for(channel)
if st.session_state.get("gw_provider") not in providers:
    st.session_state["gw_provider"] = providers[0]
provider = right.selectbox("Provider", providers, key="gw_provider", disabled=locked)
shown("provider")
if editing:
    st.checkbox("Change the provider or channel of this gateway", key="gw_change_provider",
                help="Stored credentials the new provider does not use are dropped.")

hints: dict[str, str] = st.session_state.get("gw_hints", {})
for f in PROVIDER_FIELDS[provider]:
    if f.kind == "secret":
        hint = hints.get(f.key)
        st.text_input(f.label, key=state_key(f.key), type="password",
                      placeholder=f"stored: {hint} (leave empty to keep it)" if hint else "not set",
                      help="Stored encrypted and never shown back; type a new value to replace it.")
        if hint:
            st.caption(f"{f.label}: stored {hint}")
    elif f.kind == "choice":
        st.selectbox(f.label, f.choices, key=state_key(f.key))
    elif f.kind == "json":
        st.text_area(f.label, key=state_key(f.key), height=80)
    else:
        st.text_input(f.label, key=state_key(f.key), help=f.help or None)
    shown(f.key)
if provider == "outbox":
    st.caption("The outbox keeps messages in this database for the console (development only).")
st.text_area("Advanced options (JSON: timeout_seconds, attempts, backoff_seconds, ...)", key="gw_advanced",
             height=68)
shown("options")
left, right = st.columns(2)
left.checkbox("Default gateway for this channel", key="gw_default")
right.checkbox("Enabled", key="gw_enabled")
st.text_input("Why this change (kept in the audit log; required)", key="gw_reason")
shown("reason")
for key in list(problems):  # anything not shown next to a field of this form
    shown(key)
st.button("Save gateway", type="primary", key="gw_save", on_click=save)

if editing:
    st.subheader(f"Send a test message through {chosen}")
    stored_channel = next(g.channel for g in configured if g.name == chosen)
    st.caption("A real message through the provider, with no code in it: \"Test message from the OTP console\". "
               "The stored settings are used, not unsaved edits.")
    left, right = st.columns(2)
    left.text_input("Send to (phone number or email address)", key="gw_test_to")
    if stored_channel in (Channel.WHATSAPP.value, Channel.ZALO.value):
        right.text_input("Approved provider template (name or id)", key="gw_test_template")
    st.button("Send a test message", key="gw_test_send", on_click=test_message)
    result = st.session_state.get("gw_test_result")
    if isinstance(result, str):
        st.error(f"Not sent: {result}")
    elif result is not None:
        answer = (f"{result.status} to {result.destination} — HTTP {result.http_status or '—'}, "
                  f"provider message id {result.provider_message_id or '—'}, {result.attempts} attempt(s)")
        (st.error if result.status == "failed" else st.success)(
            f"Provider answer: {answer}" + (f". Error: {result.error}" if result.error else ""))
