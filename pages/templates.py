"""Templates: per action and channel, which one is used and why, an editor with live checks, versions."""
import pandas as pd
import streamlit as st

from console_ui.state import can, form_needs_loading, gate, runtime, selected_org
from core.admin.template_versions import (TemplateRefused, approve, check_version, content_of, diff_fields,
                                          diff_versions, list_versions, reactivate, reject, save_draft,
                                          submit_for_review)
from core.db.models import TemplateVersionCreate
from core.delivery.messages import in_force, resolve_template
from core.enums import Action, Channel
from core.errors import OtpError

rt = runtime()
identity = gate("templates.view")
org_id = selected_org()
st.title("Templates")
if flash := st.session_state.pop("tpl_flash", None):
    getattr(st, flash[0])(flash[1])

left, right = st.columns(2)
action = Action(left.selectbox("Action", [a.value for a in Action], key="tpl_action"))
channel = Channel(right.selectbox("Channel", [c.value for c in Channel], key="tpl_channel"))
config = rt.config_for(org_id, action)

st.subheader(f"Which template {action.value} uses")
choice_rows = []
for each in Channel:
    try:
        chosen = resolve_template(each, action, rt.active_templates(org_id))
        choice_rows.append({"channel": each.value, "used": chosen.origin, "version": chosen.version_id,
                            "why": chosen.reason})
    except OtpError as exc:
        choice_rows.append({"channel": each.value, "used": "none", "version": None,
                            "why": f"{exc.problems[0].code}: {exc.problems[0].message}"})
st.dataframe(pd.DataFrame(choice_rows), hide_index=True, width="stretch", key="tpl_choice")
st.caption("A template in the API request body wins over both; the engine uses only the active approved version.")

edit_tab, versions_tab = st.tabs(["Edit", "Versions"])

with edit_tab:
    # The editor starts from what is in force (the approved version, else the built-in template) and follows
    # it: when it changes (an approval, a rollback) the editor shows the new one at once.
    current = in_force(channel, action, rt.active_templates(org_id))
    suffix = f"{action.value}_{channel.value}"
    in_force_id = (current.version_id if current else None) or "builtin"
    if form_needs_loading(f"tpl_loaded_{suffix}", in_force_id,
                          *(f"tpl_{field}_{suffix}" for field in ("text", "subject", "body", "wa_name", "zalo"))):
        st.session_state.update({
            f"tpl_text_{suffix}": (current.text if current else "") or "",
            f"tpl_subject_{suffix}": (current.subject if current else "") or "",
            f"tpl_body_{suffix}": (current.body if current else "") or "",
            f"tpl_html_{suffix}": bool(current and current.is_html),
            f"tpl_wa_name_{suffix}": (current.whatsapp_name if current else "") or "",
            f"tpl_wa_lang_{suffix}": (current.whatsapp_language if current else "") or "en",
            f"tpl_zalo_{suffix}": (current.zalo_template_id if current else "") or "",
            f"tpl_loaded_{suffix}": in_force_id})
    editor, preview = st.columns(2)
    with editor:
        st.markdown("**Editor**" + ("" if can("templates.edit") else " (read only for your role)"))
        st.caption("Starts from what is in force: " + (current.reason if current else "nothing approved yet"))
        disabled = not can("templates.edit")
        fields = {"action": action.value, "channel": channel.value}
        if channel in (Channel.SMS, Channel.PHONE):
            fields["text"] = st.text_area("Text", height=150, key=f"tpl_text_{suffix}", disabled=disabled)
        elif channel is Channel.EMAIL:
            fields["subject"] = st.text_input("Subject", key=f"tpl_subject_{suffix}", disabled=disabled)
            fields["body"] = st.text_area("Body", height=220, key=f"tpl_body_{suffix}", disabled=disabled)
            fields["is_html"] = st.checkbox("HTML body", key=f"tpl_html_{suffix}", disabled=disabled)
        elif channel is Channel.WHATSAPP:
            fields["whatsapp_name"] = st.text_input("Approved WhatsApp template name", key=f"tpl_wa_name_{suffix}",
                                                    disabled=disabled)
            fields["whatsapp_language"] = st.text_input("Language", key=f"tpl_wa_lang_{suffix}", disabled=disabled)
        else:
            fields["zalo_template_id"] = st.text_input("Zalo ZNS template id", key=f"tpl_zalo_{suffix}",
                                                       disabled=disabled)
        st.caption("Variables: {{ validation_code }} (exactly once), {{ expiry_minutes }}, {{ action }}, {{ brand }}")
    draft = TemplateVersionCreate(**fields)
    report = check_version(draft, config, brand=rt.org(org_id).brand)
    with preview:
        st.markdown("**Preview** (with a sample code)")
        if report.preview_subject:
            st.text(f"Subject: {report.preview_subject}")
        if report.preview_text is not None:
            st.code(report.preview_text, language="html" if draft.is_html else None, wrap_lines=True)
        if report.sms:
            a, b, c = st.columns(3)
            a.metric("Encoding", report.sms.encoding)
            b.metric("Characters", report.sms.characters)
            c.metric("Segments", report.sms.segments)
        st.markdown("**Checks**")
        if report.ok:
            st.success("All checks pass.")
        for issue in report.issues:
            st.error(issue)
        for hint in report.hints:
            st.info(hint)
    if can("templates.edit"):
        save_col, submit_col = st.columns(2)
        if save_col.button("Save as draft", key="tpl_save"):
            try:
                with rt.session() as db:
                    saved = save_draft(db, actor=identity, fields=draft, config=config, org_id=org_id)
            except TemplateRefused as exc:
                st.error("; ".join(exc.reasons))
            else:
                st.session_state["tpl_flash"] = ("success", f"Saved draft version {saved.version}.")
                st.rerun()
        if submit_col.button("Save and submit for review", key="tpl_submit", type="primary"):
            if not report.ok:
                st.error("Fix these before submitting: " + "; ".join(report.issues))
            else:
                with rt.session() as db:
                    saved = save_draft(db, actor=identity, fields=draft, config=config, org_id=org_id)
                    try:
                        submit_for_review(db, actor=identity, version_id=saved.id, config=config,
                                          brand=rt.org(org_id).brand, org_id=org_id)
                    except TemplateRefused as exc:
                        st.error("Not submitted: " + "; ".join(exc.reasons))
                    else:
                        st.session_state["tpl_flash"] = ("success", f"Version {saved.version} awaits approval.")
                        st.rerun()

with versions_tab:
    with rt.session() as db:
        versions = list_versions(db, action=action, channel=channel, org_id=org_id)
    if not versions:
        st.info("No saved versions yet: the built-in template applies.")
    else:
        st.dataframe(pd.DataFrame([{
            "version": v.version, "status": v.status, "active": v.is_active, "author": v.author,
            "reviewer": v.reviewer, "reason": v.reason, "created": v.created_at} for v in versions]),
            hide_index=True, width="stretch", key="tpl_versions",
            column_config={"created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")})
        by_label = {f"v{v.version} ({v.status}{', active' if v.is_active else ''})": v for v in versions}
        picked = by_label[st.selectbox("Version", list(by_label), key="tpl_pick")]
        version_report = check_version(TemplateVersionCreate.model_validate(picked), config, brand=rt.org(org_id).brand)
        if version_report.preview_subject:
            st.text(f"Subject: {version_report.preview_subject}")
        st.code(version_report.preview_text or "", language=None, wrap_lines=True)  # message text, not code
        for issue in version_report.issues:
            st.error(issue)
        if not picked.is_active:
            # What approving (or re-activating) this version would change: against what is in force now,
            # the built-in template when no version was ever approved.
            now = in_force(channel, action, rt.active_templates(org_id))
            label = f"v{now.version_id} (in force)" if now and now.version_id else "built-in (in force)"
            st.markdown(f"**Changes against what is in force** ({label})")
            st.code(diff_fields(content_of(now) if now else {}, content_of(picked), label, f"v{picked.version}")
                    or "(no differences)", language="diff")

        def act(step, success: str, **kwargs) -> None:
            try:
                with rt.session() as db:
                    step(db, actor=identity, version_id=picked.id, org_id=org_id, **kwargs)
            except TemplateRefused as exc:
                st.session_state["tpl_flash"] = ("error", "Refused: " + "; ".join(exc.reasons))
            else:
                rt.configuration_changed()
                st.session_state["tpl_flash"] = ("success", success)
            st.rerun()

        if picked.status == "draft" and can("templates.edit"):
            if st.button("Submit for review", key="tpl_version_submit"):
                act(submit_for_review, f"Version {picked.version} submitted.", config=config, brand=rt.org(org_id).brand)
        if picked.status == "pending" and can("templates.approve"):
            approve_col, reject_col = st.columns(2)
            if approve_col.button("Approve and activate", key="tpl_approve", type="primary"):
                act(approve, f"Version {picked.version} approved and active.", config=config, brand=rt.org(org_id).brand)
            reason = reject_col.text_input("Reason for rejecting", key="tpl_reject_reason")
            if reject_col.button("Reject", key="tpl_reject"):
                act(reject, f"Version {picked.version} rejected.", reason=reason)
        if picked.status == "approved" and not picked.is_active and can("templates.approve"):
            why = st.text_input("Why roll back to this version?", key="tpl_rollback_reason")
            if st.button("Re-activate this version", key="tpl_reactivate"):
                act(reactivate, f"Version {picked.version} is active again.", reason=why)

        if len(versions) > 1:
            st.markdown("**Compare two versions**")
            a_col, b_col = st.columns(2)
            labels = list(by_label)
            older = by_label[a_col.selectbox("From", labels, index=1, key="tpl_diff_a")]
            newer = by_label[b_col.selectbox("To", labels, index=0, key="tpl_diff_b")]
            st.code(diff_versions(older, newer) or "(no differences)", language="diff")
