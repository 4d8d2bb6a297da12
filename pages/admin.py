"""Staff and API clients: who may use the console, and which applications may call the API."""
from datetime import datetime

import pandas as pd
import streamlit as st

from console_ui.state import can, form_needs_loading, gate, runtime, selected_org
from core.admin.clients import list_clients
from core.admin.organisations import OrganisationRefused, UnknownOrganisation, create_organisation, list_organisations
from core.admin.staff import (ROLES, InvalidStaff, PermissionDenied, all_staff, assign_staff, create_staff,
                              disable_staff, list_staff, set_role)
from core.admin.tokens import MAX_TTL_SECONDS, MIN_TTL_SECONDS
from core.db.models import OrganisationBase, OrganisationUpdate, StaffCreate
from core.services.admin_actions import (new_api_client, revoke_api_client, save_organisation,
                                         set_api_client_end_user_ip_header, set_api_client_token_ttl)

rt = runtime()
identity = gate("staff.manage")
org_id = selected_org()
st.title("Staff and API clients")
if flash := st.session_state.pop("admin_flash", None):
    getattr(st, flash[0])(flash[1])

STAFF_FIELDS = {"staff_username": "", "staff_password": "", "staff_role": ROLES[0]}
CLIENT_FIELDS = {"client_name": "", "client_permissions": "otp:write", "client_ip_header": ""}
# A form is emptied only after it saved: an error (a taken username) keeps what was typed. The values are set,
# not deleted: the browser keeps a widget's old value unless the script sends a new one.
for field, empty in st.session_state.pop("admin_clear", {}).items():
    st.session_state[field] = empty


def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


def save_organisation_edit() -> None:
    """The edit form's callback: runs before the page, so the outcome shows next to each field; all of the form is
    saved, or nothing and what was typed stays."""
    state = st.session_state
    try:
        edited = save_organisation(rt, actor=identity, org_id=state["org_edit_pick"], fields=OrganisationUpdate(
            name=state["org_edit_name"], brand=state["org_edit_brand"].strip(),
            timezone=state["org_edit_timezone"], phone_region=state["org_edit_region"]))
    except OrganisationRefused as refused:
        state["org_edit_problems"] = refused.problems
    except (PermissionDenied, UnknownOrganisation) as exc:
        state["admin_flash"] = ("error", f"Not saved: {exc}.")
    else:
        org = edited.organisation
        state["admin_flash"] = ("success", f"Saved {org.name} ({org.slug}): changed "
                                           f"{', '.join(EDIT_LABELS[f] for f in edited.changes)}." if edited.changes
                                else f"{org.name} ({org.slug}): nothing to change.")
        state["org_edit_loaded"] = None  # show what is now stored


EDIT_LABELS = {"name": "name", "brand": "brand", "timezone": "time zone", "phone_region": "phone region"}


def confirm(action: str, target: int, question: str, yes_label: str) -> bool:
    """Two steps for an action that cannot be undone from here: the first click asks, "Yes" does it; the
    question names its target, and choosing another target withdraws it."""
    if st.session_state.get("admin_confirm") != (action, target):
        return False
    st.warning(question)
    yes, no = st.columns(2)
    if no.button("Cancel", key=f"{action}_cancel"):
        st.session_state.pop("admin_confirm", None)
        st.rerun()
    return yes.button(yes_label, key=f"{action}_yes", type="primary")


# Keyed and tracked, so the rerun after a save on "API clients" (which adds a message above the tabs) stays there.
# Platform admins also make organisations and say who works in which (platform actions, audited as such).
staff_tab, clients_tab, *platform_tab = st.tabs(["Staff", "API clients", *(["Organisations"] if can("orgs.manage")
                                                                          else [])],
                                                key="admin_tab", on_change="rerun")
with staff_tab:
    with rt.session() as db:
        people = list_staff(db, org_id=org_id)
    st.dataframe(pd.DataFrame([{"id": p.id, "username": p.username, "role": p.role,
                                "active": p.disabled_at is None, "last sign-in": when(p.last_login_at)}
                               for p in people]),
                 hide_index=True, width="stretch", key="staff_table")
    with st.form("staff_new"):
        st.markdown("**Add a staff member**")
        a, b, c = st.columns(3)
        username = a.text_input("Username", key="staff_username")
        password = b.text_input("Initial password", type="password", key="staff_password")
        role = c.selectbox("Role", ROLES, key="staff_role")
        add = st.form_submit_button("Add", key="staff_add")
    if add:
        try:
            with rt.session() as db:
                create_staff(db, actor=identity, staff_create=StaffCreate(username=username, password=password, role=role), org_id=org_id)
        except InvalidStaff as exc:
            st.error(str(exc))
        else:
            st.session_state["admin_flash"] = ("success", f"Added {username} as {role}.")
            st.session_state["admin_clear"] = STAFF_FIELDS
            st.rerun()
    # A platform admin (admin in every organisation) is changed by another platform admin only.
    others = {f"{p.username} ({p.role})": p for p in people if p.id != identity.id and p.disabled_at is None
              and (not p.platform_admin or can("orgs.manage"))}
    if others:
        st.markdown("**Change a role or disable an account**")
        a, b = st.columns(2)
        who = others[a.selectbox("Staff member", list(others), key="staff_pick")]
        # Keyed per person, so picking someone shows their own role rather than the one shown for the last.
        new_role = b.selectbox("New role", ROLES, index=ROLES.index(who.role), key=f"staff_new_role_{who.id}")
        c, d = st.columns(2)
        try:
            if c.button("Change role", key="staff_change_role"):
                with rt.session() as db:
                    set_role(db, actor=identity, staff_id=who.id, role=new_role, org_id=org_id)
                st.session_state["admin_flash"] = ("success", f"{who.username} is now {new_role}.")
                st.rerun()
            if d.button("Disable account", key="staff_disable"):
                st.session_state["admin_confirm"] = ("staff_disable", who.id)
            if confirm("staff_disable", who.id, f"Disable {who.username}? They can no longer sign in, and only a "
                                                "new account brings them back.", f"Yes, disable {who.username}"):
                with rt.session() as db:
                    done = disable_staff(db, actor=identity, staff_id=who.id, org_id=org_id)
                st.session_state.pop("admin_confirm", None)
                st.session_state["admin_flash"] = ("success", f"{who.username} can no longer sign in." if
                                                   done == "disabled" else
                                                   f"{who.username} no longer works in this organisation.")
                st.rerun()
        except InvalidStaff as exc:
            st.error(str(exc))

with clients_tab:
    if made := st.session_state.pop("admin_new_client", None):
        st.warning("Copy the secret now: it is shown only once.")
        st.code(f"key: {made.key}\nsecret: {made.secret}\nbearer: {made.bearer_token}")
    with rt.session() as db:
        clients = list_clients(db, org_id=org_id)
    st.dataframe(pd.DataFrame([{"id": c.id, "name": c.name, "key": c.key, "permissions": c.permissions,
                                "end users' IP from": c.end_user_ip_header or "-",
                                "token TTL (s)": c.token_ttl_seconds,
                                "created": when(c.created_at), "revoked": when(c.revoked_at) if c.revoked_at else ""}
                               for c in clients]),
                 hide_index=True, width="stretch", key="clients_table")
    header_help = ("For the per-address limit. Empty: the client is a backend acting for many customers; its own "
                   "address is no customer's and no per-address count is taken. A header name such as "
                   "X-End-User-IP: the client sends each customer's IP in it. X-Forwarded-For: the client's "
                   "requests come from its end users, directly or through OTP_TRUSTED_PROXIES.")
    st.session_state.setdefault("client_permissions", CLIENT_FIELDS["client_permissions"])
    with st.form("client_new"):
        a, b, c = st.columns(3)
        name = a.text_input("Client name", key="client_name")
        permissions = b.text_input("Permissions", key="client_permissions")
        header = c.text_input("End users' IP header", key="client_ip_header", help=header_help)
        create = st.form_submit_button("Create client", key="client_create")
    if create:
        try:
            st.session_state["admin_new_client"] = new_api_client(
                rt, actor=identity, name=name, permissions=permissions, end_user_ip_header=header, org_id=org_id)
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.session_state["admin_clear"] = CLIENT_FIELDS
            st.rerun()
    active = {f"{c.name} ({c.key})": c for c in clients if c.revoked_at is None}
    if active:
        st.markdown("**OAuth access-token life** (tokens already issued keep theirs)")
        a, b = st.columns(2)
        timed = active[a.selectbox("Client", list(active), key="client_ttl_pick")]
        # Keyed per client, so picking another client shows its own value.
        seconds = b.number_input("Seconds", min_value=MIN_TTL_SECONDS, max_value=MAX_TTL_SECONDS,
                                 value=timed.token_ttl_seconds, step=60, key=f"client_ttl_seconds_{timed.id}")
        if st.button("Save token life", key="client_ttl_save"):
            try:
                set_api_client_token_ttl(rt, actor=identity, client_id=timed.id, seconds=int(seconds), org_id=org_id)
            except ValueError as exc:
                st.error(str(exc))
            else:
                st.session_state["admin_flash"] = ("success", f"Tokens of {timed.name} now live {int(seconds)} s.")
                st.rerun()
        st.markdown("**End users' IP header, or revoke**")
        chosen = active[st.selectbox("Client to change or revoke", list(active), key="client_pick")]
        a, b = st.columns([3, 1], vertical_alignment="bottom")
        new_header = a.text_input("End users' IP header", value=chosen.end_user_ip_header or "", help=header_help,
                                  key=f"client_ip_header_{chosen.id}")
        if b.button("Save", key="client_ip_header_save"):
            try:
                stored = set_api_client_end_user_ip_header(rt, actor=identity, client_id=chosen.id, header=new_header, org_id=org_id)
            except (ValueError, LookupError) as exc:
                st.error(str(exc))
            else:
                st.session_state["admin_flash"] = ("success", f"{chosen.name}: end users' IP from "
                                                              f"{stored or 'nowhere (a backend)'}.")
                st.rerun()
        if st.button("Revoke", key="client_revoke"):
            st.session_state["admin_confirm"] = ("client_revoke", chosen.id)
        if confirm("client_revoke", chosen.id, f"Revoke {chosen.name}? Its calls are refused from now on (on "
                   f"other API processes within {rt.settings.auth_cache_seconds:g} s); this cannot be undone.",
                   f"Yes, revoke {chosen.name}"):
            revoke_api_client(rt, actor=identity, client_id=chosen.id, org_id=org_id)
            st.session_state.pop("admin_confirm", None)
            st.session_state["admin_flash"] = ("success", f"Revoked {chosen.name}.")
            st.rerun()

if platform_tab:
    with platform_tab[0]:
        with rt.session() as db:
            organisations = list_organisations(db)
            everyone = all_staff(db, actor=identity)
        st.dataframe(pd.DataFrame([{"id": o.id, "slug": o.slug, "name": o.name, "brand": o.brand or "(service)",
                                    "time zone": o.timezone or "(service)", "phone region": o.phone_region or
                                    "(service)", "created": when(o.created_at)} for o in organisations]),
                     hide_index=True, width="stretch", key="orgs_table")
        with st.form("org_new"):
            st.markdown("**Add an organisation**")
            a, b = st.columns(2)
            slug = a.text_input("Slug (lower-case letters, digits, -)", key="org_slug")
            org_name = b.text_input("Name", key="org_name")
            a, b, c = st.columns(3)
            brand = a.text_input("Brand (empty: the service's)", key="org_brand")
            zone = b.text_input("Time zone (empty: the service's)", key="org_timezone")
            region = c.text_input("Phone region (empty: the service's)", key="org_region")
            made_org = st.form_submit_button("Add organisation", key="org_add")
        if made_org:
            try:
                with rt.session() as db:
                    # Built unchecked: core reports every problem (an over-long name too) in words.
                    made = create_organisation(db, actor=identity, fields=OrganisationBase.model_construct(
                        slug=slug, name=org_name, brand=brand.strip() or None, timezone=zone or None,
                        phone_region=region or None))
            except OrganisationRefused as exc:
                st.error(str(exc))
            else:
                rt.configuration_changed()
                st.session_state["admin_flash"] = ("success", f"Added the organisation {made.name} ({made.slug}).")
                st.session_state["admin_clear"] = {"org_slug": "", "org_name": "", "org_brand": "",
                                                   "org_timezone": "", "org_region": ""}
                st.rerun()
        names = {o.id: f"{o.name} ({o.slug})" for o in organisations}
        st.markdown("**Change an organisation** (its slug stays: the CLI names it by that)")
        problems: dict[str, list[str]] = st.session_state.pop("org_edit_problems", {})
        editing = {o.id: o for o in organisations}[st.selectbox("Organisation", list(names),
                                                                  format_func=names.__getitem__, key="org_edit_pick")]
        stored = {"org_edit_name": editing.name, "org_edit_brand": editing.brand or "",
                  "org_edit_timezone": editing.timezone or "", "org_edit_region": editing.phone_region or ""}
        if form_needs_loading("org_edit_loaded", (editing.id, *stored.values()), *stored):
            st.session_state.update({**stored, "org_edit_loaded": (editing.id, *stored.values())})
        if problems:
            st.error("Not saved: the problems are shown next to their fields. Nothing was changed.")
        with st.form("org_edit"):
            fields = st.columns(4)
            for place, (field, key, label) in zip(fields, (
                    ("name", "org_edit_name", "Name"), ("brand", "org_edit_brand", "Brand (empty: the service's)"),
                    ("timezone", "org_edit_timezone", "Time zone (empty: the service's)"),
                    ("phone_region", "org_edit_region", "Phone region (empty: the service's)"))):
                place.text_input(label, key=key)
                for problem in problems.get(field, []):
                    place.error(problem, icon=":material/error:")
            st.form_submit_button("Save organisation", key="org_edit_save", on_click=save_organisation_edit)
        st.markdown("**Who works where**")
        st.dataframe(pd.DataFrame([{"username": p.username, "platform admin": p.platform_admin,
                                    **{names[o]: roles.get(o, "") for o in names}}
                                   for p, roles in everyone if p.disabled_at is None]),
                     hide_index=True, width="stretch", key="memberships_table")
        assignable = {p.username: (p, roles) for p, roles in everyone
                      if p.disabled_at is None and not p.platform_admin}
        if assignable:
            NONE = "(no access)"
            a, b, c = st.columns(3)
            person, roles = assignable[a.selectbox("Staff member", list(assignable), key="assign_who")]
            where = b.selectbox("Organisation", list(names), format_func=names.__getitem__, key="assign_org")
            now_role = roles.get(where, NONE)
            # Keyed per person and organisation, so each pick shows the role held there now.
            new_org_role = c.selectbox("Role", [*ROLES, NONE], index=[*ROLES, NONE].index(now_role),
                                       key=f"assign_role_{person.id}_{where}")
            if st.button("Save", key="assign_save", disabled=new_org_role == now_role):
                try:
                    with rt.session() as db:
                        assign_staff(db, actor=identity, staff_id=person.id, org_id=where,
                                     role=None if new_org_role == NONE else new_org_role)
                except InvalidStaff as exc:
                    st.error(str(exc))
                else:
                    st.session_state["admin_flash"] = ("success", f"{person.username}: {new_org_role} in "
                                                                  f"{names[where]}.")
                    st.rerun()
