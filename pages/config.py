"""OTP configuration per action: every setting of the contract, validated and audited."""
import streamlit as st

from console_state import gate, runtime
from core.console_ops import save_action_config
from core.enums import Action, Channel
from core.models import ActionConfigUpdate
from core.otpconfig import MAX_ATTEMPTS_PER_CODE, MAX_CONSECUTIVE_FAILURES, SAFE_MODES, format_channel_budgets

rt = runtime()
identity = gate("config.edit")
st.title("OTP configuration")
if flash := st.session_state.pop("cfg_flash", None):
    st.success(flash)
st.caption(f"Service-wide: {rt.settings.daily_limit} generates per user per day across all actions; "
           f"the day begins at midnight in {rt.settings.timezone}.")

action = Action(st.selectbox("Action", [a.value for a in Action], key="cfg_action"))
c = rt.config_for(action)
with st.form(f"cfg_{action.value}"):
    a, b, d = st.columns(3)
    code_length = a.number_input("Code length", 4, 50, c.code_length, key="cfg_code_length")
    alphanumeric = b.checkbox("Letters and digits", c.alphanumeric, key="cfg_alphanumeric")
    validity = d.number_input("Validity (minutes)", 1, 7 * 24 * 60, c.validity_minutes, key="cfg_validity")
    channels = st.multiselect("Enabled channels", [ch.value for ch in Channel],
                              [ch.value for ch in Channel if ch in c.channels], key="cfg_channels")
    policy = st.multiselect("Channel policy when a request names none (in order)", [ch.value for ch in Channel],
                            [ch.value for ch in c.channel_policy], key="cfg_policy")
    a, b, d = st.columns(3)
    cap_on = a.checkbox("Per-action daily cap", c.daily_cap is not None, key="cfg_cap_on")
    cap = b.number_input("Cap per user per day", 1, max(1, rt.settings.daily_limit - 1),
                         min(c.daily_cap or 100, max(1, rt.settings.daily_limit - 1)), key="cfg_cap")
    sends = d.number_input("Sends of one code", 1, 1000, c.max_sends_per_code, key="cfg_sends")
    a, b, d = st.columns(3)
    validate_limit = a.number_input("Validations per window", 1, 1000, c.validate_limit, key="cfg_validate_limit")
    window = b.number_input("Validate window (minutes)", 1, 1440, c.validate_window_minutes, key="cfg_window")
    attempts = d.number_input(f"Attempts per code (≤ {MAX_ATTEMPTS_PER_CODE})", 1, MAX_ATTEMPTS_PER_CODE,
                              min(c.attempts_per_code, MAX_ATTEMPTS_PER_CODE), key="cfg_attempts")
    a, b = st.columns(2)
    failures = a.number_input(f"Consecutive failures before a lock (≤ {MAX_CONSECUTIVE_FAILURES})", 1,
                              MAX_CONSECUTIVE_FAILURES, c.max_consecutive_failures, key="cfg_failures")
    lock = b.number_input("Lock (minutes)", 1, 7 * 24 * 60, c.lock_minutes, key="cfg_lock")
    a, b = st.columns(2)
    gateways = a.text_input("Gateways for this action (e.g. SMS=twilio-main,EMAIL=smtp; empty: defaults)",
                            c.gateways, key="cfg_gateways")
    failover = b.multiselect("Failover plan when a request names no channels (in order)",
                             [ch.value for ch in Channel], [ch.value for ch in c.failover], key="cfg_failover")
    failover_seconds = st.number_input("Wait for a 'delivered' receipt before failing over (seconds)", 1, 3600,
                                       c.failover_seconds, key="cfg_failover_seconds")
    st.markdown("**Abuse limits for this action** (empty: the service-wide setting; 0 turns a limit off)")
    overrides = {}
    columns = st.columns(4)
    for index, (name, label) in enumerate((
            ("destination_limit", "Sends to one destination"), ("destination_window_minutes", "…per minutes"),
            ("prefix_limit", "Codes to one number prefix"), ("prefix_window_minutes", "…per minutes"),
            ("ip_limit", "Generates from one IP"), ("ip_window_minutes", "…per minutes"),
            ("client_limit", "Generates per API client per minute"))):
        service = getattr(rt.settings, name)
        text = columns[index % 4].text_input(f"{label} (service: {service})",
                                             "" if getattr(c, name) is None else str(getattr(c, name)),
                                             key=f"cfg_{name}")
        overrides[name] = text.strip()
    a, b = st.columns(2)
    budgets = a.text_input("Daily channel budgets of this action, besides the service-wide ones (e.g. SMS=2000,"
                           f"PHONE=100; service: {format_channel_budgets(rt.settings.channel_budgets) or 'none'})",
                           format_channel_budgets(c.channel_budgets), key="cfg_channel_budgets")
    service_mode = f"service-wide ({rt.settings.safe_mode})"
    safe_mode = b.selectbox("When a phone channel's budget is spent (safe mode)", [service_mode, *SAFE_MODES],
                            index=1 + SAFE_MODES.index(c.safe_mode) if c.safe_mode in SAFE_MODES else 0,
                            help="refuse: the request is refused (429). email_only: the code goes by EMAIL instead "
                                 "when the request has an email address, else it is refused.",
                            key="cfg_safe_mode")
    reason = st.text_input("Why this change (kept in the audit log)", key="cfg_reason")
    saved = st.form_submit_button("Save configuration", type="primary", key="cfg_save")

if saved:
    bad = [name for name, text in overrides.items() if text and not (text.isascii() and text.isdigit())]
    if bad:
        st.error("Not saved: limits must be whole numbers or empty (" + ", ".join(bad) + ")")
        st.stop()
    update = ActionConfigUpdate(
        code_length=int(code_length), alphanumeric=alphanumeric, validity_minutes=int(validity),
        channels=",".join(channels), channel_policy=",".join(policy), daily_cap=int(cap) if cap_on else None,
        validate_limit=int(validate_limit), validate_window_minutes=int(window), attempts_per_code=int(attempts),
        max_consecutive_failures=int(failures), lock_minutes=int(lock), max_sends_per_code=int(sends),
        gateways=gateways.strip(), failover=",".join(failover), failover_seconds=int(failover_seconds),
        channel_budgets=budgets.strip(), safe_mode=None if safe_mode == service_mode else safe_mode,
        **{name: int(text) if text else None for name, text in overrides.items()})
    try:
        save_action_config(rt, actor=identity, action=action, update=update, reason=reason)
    except ValueError as exc:
        st.error(f"Not saved: {exc}")
    else:
        st.session_state["cfg_flash"] = f"Saved the configuration of {action.value}."
        st.rerun()
