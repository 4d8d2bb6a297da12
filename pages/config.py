"""OTP configuration per action: the stored values, saved all at once or not at all, with a reason for the audit."""
import streamlit as st

from console_ui.state import form_needs_loading, gate, runtime, selected_org
from core.db.models import ActionConfigUpdate
from core.enums import Action, Channel
from core.issuing.action_config import (LIMIT_OVERRIDES, MAX_ATTEMPTS_PER_CODE, MAX_CONSECUTIVE_FAILURES, SAFE_MODES,
                                        ConfigRefused, format_channel_budgets, parse_limit_overrides)
from core.services.admin_actions import save_action_config

rt = runtime()
identity = gate("config.edit")
org_id = selected_org()
st.title("OTP configuration")
# Each message belongs to the run right after the submit that produced it: popped, never shown again.
if flash := st.session_state.pop("cfg_flash", None):
    st.success(flash)
problems: dict[str, list[str]] = st.session_state.pop("cfg_problems", {})
st.caption(f"Service-wide: {rt.settings.daily_limit} generates per user per day across all actions; "
           f"the day begins at midnight in {rt.org(org_id).timezone}.")
SERVICE_MODE = f"service-wide ({rt.settings.safe_mode})"
NUMBERS = {"code_length": "cfg_code_length", "validity_minutes": "cfg_validity", "daily_cap": "cfg_cap",
           "max_sends_per_code": "cfg_sends", "validate_limit": "cfg_validate_limit",
           "validate_window_minutes": "cfg_window", "attempts_per_code": "cfg_attempts",
           "max_consecutive_failures": "cfg_failures", "lock_minutes": "cfg_lock",
           "failover_seconds": "cfg_failover_seconds"}


def load_stored(action: Action) -> None:
    """Fill the form with what is stored for the action (on first view, on switching action, after a save)."""
    c = rt.config_for(org_id, action)
    st.session_state.update({
        **{key: getattr(c, name) for name, key in NUMBERS.items() if name != "daily_cap"},
        "cfg_cap_on": c.daily_cap is not None, "cfg_cap": c.daily_cap or 100, "cfg_alphanumeric": c.alphanumeric,
        "cfg_channels": [ch.value for ch in Channel if ch in c.channels],
        "cfg_policy": [ch.value for ch in c.channel_policy], "cfg_gateways": c.gateways,
        "cfg_failover": [ch.value for ch in c.failover], "cfg_channel_budgets": format_channel_budgets(c.channel_budgets),
        "cfg_safe_mode": c.safe_mode if c.safe_mode in SAFE_MODES else SERVICE_MODE,
        **{f"cfg_{name}": "" if getattr(c, name) is None else str(getattr(c, name)) for name in LIMIT_OVERRIDES},
        "cfg_reason": "", "cfg_loaded": action.value})


def save() -> None:
    """The submit's callback: runs before the page, so it can show the outcome next to each field."""
    state = st.session_state
    action = Action(state["cfg_action"])
    overrides, form_problems = parse_limit_overrides({name: state[f"cfg_{name}"] for name in LIMIT_OVERRIDES})
    update = ActionConfigUpdate(
        **{name: int(state[key]) for name, key in NUMBERS.items() if name != "daily_cap"},
        daily_cap=int(state["cfg_cap"]) if state["cfg_cap_on"] else None, alphanumeric=state["cfg_alphanumeric"],
        channels=",".join(state["cfg_channels"]), channel_policy=",".join(state["cfg_policy"]),
        gateways=state["cfg_gateways"].strip(), failover=",".join(state["cfg_failover"]),
        channel_budgets=state["cfg_channel_budgets"].strip(),
        safe_mode=None if state["cfg_safe_mode"] == SERVICE_MODE else state["cfg_safe_mode"], **overrides)
    try:
        save_action_config(rt, actor=identity, action=action, update=update, reason=state["cfg_reason"],
                           form_problems=form_problems, org_id=org_id)
    except ConfigRefused as refused:
        state["cfg_problems"] = refused.problems  # the input stays as typed
    else:
        state["cfg_flash"] = f"Saved the configuration of {action.value}."
        state["cfg_loaded"] = None  # reload what is now stored, with an empty reason


def shown(*names: str, place=st) -> None:
    for name in names:
        for problem in problems.get(name, []):
            place.error(problem, icon=":material/error:")


action = Action(st.selectbox("Action", [a.value for a in Action], key="cfg_action"))
if form_needs_loading("cfg_loaded", action.value, "cfg_code_length"):
    load_stored(action)
if problems:
    count = sum(len(found) for found in problems.values())
    st.error(f"Not saved: {count} problem{'s' if count > 1 else ''}, shown next to {'their' if count > 1 else 'its'} "
             "field. Nothing was changed.")

with st.form(f"cfg_{action.value}"):
    a, b, d = st.columns(3)
    a.number_input("Code length (4 to 50)", step=1, key="cfg_code_length")
    shown("code_length", place=a)
    b.checkbox("Letters and digits", key="cfg_alphanumeric")
    d.number_input("Validity (minutes)", step=1, key="cfg_validity")
    shown("validity_minutes", place=d)
    st.multiselect("Enabled channels", [ch.value for ch in Channel], key="cfg_channels")
    shown("channels")
    st.multiselect("Channel policy when a request names none (in order)", [ch.value for ch in Channel],
                   key="cfg_policy")
    shown("channel_policy")
    a, b, d = st.columns(3)
    a.checkbox("Per-action daily cap", key="cfg_cap_on")
    b.number_input(f"Cap per user per day (below {rt.settings.daily_limit})", step=1, key="cfg_cap")
    shown("daily_cap", place=b)
    d.number_input("Sends of one code", step=1, key="cfg_sends")
    shown("max_sends_per_code", place=d)
    a, b, d = st.columns(3)
    a.number_input("Validations per window", step=1, key="cfg_validate_limit")
    shown("validate_limit", place=a)
    b.number_input("Validate window (minutes)", step=1, key="cfg_window")
    shown("validate_window_minutes", place=b)
    d.number_input(f"Attempts per code (≤ {MAX_ATTEMPTS_PER_CODE})", step=1, key="cfg_attempts")
    shown("attempts_per_code", place=d)
    a, b = st.columns(2)
    a.number_input(f"Consecutive failures before a lock (≤ {MAX_CONSECUTIVE_FAILURES})", step=1, key="cfg_failures")
    shown("max_consecutive_failures", place=a)
    b.number_input("Lock (minutes)", step=1, key="cfg_lock")
    shown("lock_minutes", place=b)
    a, b = st.columns(2)
    a.text_input("Gateways for this action (e.g. SMS=twilio-main,EMAIL=smtp; empty: defaults)", key="cfg_gateways")
    shown("gateways", place=a)
    b.multiselect("Failover plan when a request names no channels (in order)", [ch.value for ch in Channel],
                  key="cfg_failover")
    shown("failover", place=b)
    st.number_input("Wait for a 'delivered' receipt before failing over (seconds)", step=1,
                    key="cfg_failover_seconds")
    shown("failover_seconds")
    st.markdown("**Abuse limits for this action** (empty: the service-wide setting; 0 turns a limit off)")
    columns = st.columns(4)
    for index, (name, label) in enumerate((
            ("destination_limit", "Sends to one destination"), ("destination_window_minutes", "…per minutes"),
            ("prefix_limit", "Codes to one number prefix"), ("prefix_window_minutes", "…per minutes"),
            ("ip_limit", "Generates from one IP"), ("ip_window_minutes", "…per minutes"),
            ("client_limit", "Generates per API client per minute"))):
        column = columns[index % 4]
        column.text_input(f"{label} (service: {getattr(rt.settings, name)})", key=f"cfg_{name}")
        shown(name, place=column)
    a, b = st.columns(2)
    a.text_input("Daily channel budgets of this action, besides the service-wide ones (e.g. SMS=2000,"
                 f"PHONE=100; service: {format_channel_budgets(rt.settings.channel_budgets) or 'none'})", key="cfg_channel_budgets")
    shown("channel_budgets", place=a)
    b.selectbox("When a phone channel's budget is spent (safe mode)", [SERVICE_MODE, *SAFE_MODES],
                help="refuse: the request is refused (429). email_only: the code goes by EMAIL instead "
                     "when the request has an email address, else it is refused.", key="cfg_safe_mode")
    shown("safe_mode", place=b)
    st.text_input("Why this change (kept in the audit log; required)", key="cfg_reason")
    shown("reason")
    st.form_submit_button("Save configuration", type="primary", key="cfg_save", on_click=save)
