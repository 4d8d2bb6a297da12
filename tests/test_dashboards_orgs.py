"""Dashboards per organisation (issue 14): every figure of organisation A counts A's rows only, "all
organisations" sums them and breaks them down, and only platform admins may ask for it or for an organisation
they do not belong to, refused by core (core.reporting.access) and not only hidden by the console."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

import console_ui.widgets as widgets
from core.admin.staff import disable_staff
from core.reporting import dashboards as D
from core.reporting import security_events as S
from core.reporting.access import NotAllowed
from core.services.generation import generate
from simulate import simulate
from tests.console_app import on_page, texts

SHARED = "+919955882233"  # a customer of both organisations


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture
def orgs(rt) -> dict[str, int]:
    """Three days of simulated traffic in two organisations (the default one and demo-2, in Asia/Kolkata), every
    limit met in each, and one number that is a customer of both."""
    report = simulate(rt, days=3, users=200, per_day=60, fail_rate=0.1, seed=11, small=True, end=rt.clock(), orgs=2)
    assert report.generates
    b = rt.org_by_slug("demo-2").id
    payload = {"entityType": "MOBILE", "entityValue": SHARED, "action": "COUPON"}
    for org in (1, b):
        run(generate(rt, payload, org_id=org))
    return {"A": 1, "B": b}


def month(rt, org_id, **more) -> D.Filters:  # type: ignore[no-untyped-def]
    today = rt.clock().date()
    return D.Filters(today - timedelta(days=5), today + timedelta(days=1), "UTC", org_id=org_id, **more)


def count(rt, sql: str, **params) -> int:  # type: ignore[no-untyped-def]
    with rt.read_db.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def raw_figures(rt, org_id: int) -> dict[str, int]:
    """The organisation's figures counted from its raw rows (the simulated days all fall in month())."""
    where = "WHERE org_id = :org"
    return {
        "requests": count(rt, f"SELECT count(*) FROM otp_request {where}", org=org_id),
        "messages": count(rt, f"SELECT count(*) FROM delivery {where}", org=org_id),
        "failed": count(rt, f"SELECT count(*) FROM delivery {where} AND status = 'failed'", org=org_id),
        "refusals": count(rt, f"SELECT count(*) FROM limit_event {where}", org=org_id),
        "burned": count(rt, f"SELECT count(*) FROM otp_validation {where} AND outcome = 'burned'", org=org_id),
        "events": count(rt, f"SELECT count(*) FROM security_event {where}", org=org_id),
    }


def ask(rt, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """fn on a connection of its own, as the console asks (a rollup refresh commits beside it first)."""
    with rt.read_db.connect() as conn:
        return fn(conn, *args, **kwargs)


def figures(rt, org_id: int | None, staff_id: int | None = None) -> dict[str, int]:
    f = month(rt, org_id, staff_id=staff_id)
    refusals = ask(rt, D.refusals_by_type, f)
    summary = ask(rt, D.delivery_summary, f)
    return {
        "requests": ask(rt, D.usage_totals, f).requests,
        "messages": sum(r.messages for r in summary),
        "failed": sum(r.failed for r in summary),
        "refusals": sum(n for kind, n in refusals.items() if kind != "attempts"),
        "burned": refusals["attempts"],
        "events": sum(ask(rt, S.event_counts, start=f.start, end=f.end, org_id=org_id, staff_id=staff_id).values()),
    }


def test_each_organisations_figures_count_only_its_own_rows(rt, orgs):
    """Usage, delivery, refusals, burned codes and security events: the filter on org_id in every query."""
    a, b = raw_figures(rt, orgs["A"]), raw_figures(rt, orgs["B"])
    assert all(a.values()) and all(b.values()), (a, b)  # both organisations have every kind of row
    assert figures(rt, orgs["A"]) == a
    assert figures(rt, orgs["B"]) == b
    f = month(rt, orgs["B"])
    assert sum(r.requests for r in ask(rt, D.daily_usage, f)) == b["requests"]
    assert sum(d.messages for d in ask(rt, D.delivery_by_day, f)) == b["messages"]
    assert sum(x.count for x in ask(rt, D.failures_by_error, f, top=100)) == b["failed"]
    assert sum(n for _, _, n in ask(rt, D.refusals_by_day, f)) == b["refusals"]


def test_one_organisations_customers_and_requests_stay_its_own(rt, orgs):
    """Timeline search by recipient, the timeline itself, the most refused users and prefixes, the users nearest
    the daily limit and the security events list: only the organisation's customers."""
    with rt.read_db.connect() as conn:
        ids = {org: D.find_requests(conn, recipient=SHARED, org_id=org) for org in orgs.values()}
        owners = {org: {int(o) for o in conn.execute(text("SELECT org_id FROM otp_request WHERE id IN "
                                                          f"({','.join(map(str, found))})")).scalars()}
                  for org, found in ids.items()}
        assert owners == {orgs["A"]: {orgs["A"]}, orgs["B"]: {orgs["B"]}}
        b_request = ids[orgs["B"]][0]
        assert D.request_timeline(conn, b_request, org_id=orgs["A"]) is None  # B's request id, asked in A
        assert D.request_timeline(conn, b_request, org_id=orgs["B"]).request_id == b_request
        for org in orgs.values():
            f = month(rt, org)
            users = D.top_refused_users(conn, f, top=1000)
            assert users and {u.org_id for u in users} == {org}
            assert {u.user_key.startswith(f"o{orgs['B']}|") for u in users} == {org == orgs["B"]}
            prefixes = D.top_refused_prefixes(conn, f, top=1000)
            mobiles = count(rt, "SELECT count(*) FROM limit_event WHERE org_id = :org AND user_key LIKE :like",
                            org=org, like=("" if org == 1 else f"o{org}|") + "MOBILE:%")
            assert sum(n for _, n, _ in prefixes) == mobiles > 0
            events = S.recent_events(conn, start=f.start, end=f.end, org_id=org, limit=1000)
            assert events and {e.org_id for e in events} == {org}
        periods = [p for (p,) in conn.execute(text("SELECT DISTINCT period FROM usage_counter "
                                                   "WHERE scope = 'daily:*'"))]
        for org in orgs.values():
            near = [n for day in periods for n in D.nearest_daily_limit(conn, day=day, limit=500, top=1000,
                                                                         org_id=org)]
            assert near and {n.org_id for n in near} == {org}


def test_all_organisations_sum_and_break_down(rt, orgs):
    a, b = figures(rt, orgs["A"]), figures(rt, orgs["B"])
    assert figures(rt, None) == {k: a[k] + b[k] for k in a}
    rows = {r.org_id: r for r in ask(rt, D.org_breakdown, month(rt, None))}
    with rt.read_db.connect() as conn:
        assert set(rows) == set(orgs.values())
        for org, mine in ((orgs["A"], a), (orgs["B"], b)):
            assert (rows[org].requests, rows[org].messages, rows[org].failed, rows[org].refusals) == \
                (mine["requests"], mine["messages"], mine["failed"], mine["refusals"])
        # One organisation's breakdown is its own line only.
        assert [r.org_id for r in D.org_breakdown(conn, month(rt, orgs["B"]))] == [orgs["B"]]
        everyone = D.find_requests(conn, recipient=SHARED, org_id=None)
        assert len(everyone) == 2


def _every_question(rt, org_id, staff_id):  # type: ignore[no-untyped-def]
    """Each dashboard function asked for org_id by staff_id: the names of those that answered."""
    f = month(rt, org_id, staff_id=staff_id)
    answered = []
    with rt.read_db.connect() as conn:
        asks = {name: (lambda fn=getattr(D, name): fn(conn, f)) for name in (
            "daily_usage", "usage_totals", "time_to_validate_by_day", "delivery_summary", "delivery_by_day",
            "failures_by_error", "refusals_by_type", "refusals_by_day", "top_refused_users", "top_refused_prefixes",
            "org_breakdown")}
        who = {"org_id": org_id, "staff_id": staff_id}
        asks |= {
            "live_delivery": lambda: D.live_delivery(conn, now=rt.clock(), **who),
            "find_requests": lambda: D.find_requests(conn, recipient=SHARED, **who),
            "request_timeline": lambda: D.request_timeline(conn, 1, **who),
            "nearest_daily_limit": lambda: D.nearest_daily_limit(conn, day="2026-11-25", limit=5, **who),
            "event_counts": lambda: S.event_counts(conn, start=f.start, end=f.end, **who),
            "recent_events": lambda: S.recent_events(conn, start=f.start, end=f.end, **who),
        }
        if org_id is not None:
            asks["why_refused"] = lambda: D.why_refused(
                conn, rt.org(org_id).settings, user_key=("" if org_id == 1 else f"o{org_id}|") + f"MOBILE:{SHARED}",
                now=rt.clock(), configs={a.value: c for a, c in rt.active_configs(org_id).items()}, **who)
        for name, ask in asks.items():
            try:
                ask()
            except NotAllowed:
                continue
            answered.append(name)
    return answered


def test_only_platform_admins_see_every_or_another_organisation_through_core(rt, team, orgs):
    viewer, admin = team["viewer"].id, team["admin"].id  # vic: a viewer in org 1 only; ada: the platform admin
    assert len(_every_question(rt, orgs["A"], viewer)) == 18  # their own organisation: every figure
    assert _every_question(rt, orgs["B"], viewer) == []  # another organisation: none
    assert _every_question(rt, None, viewer) == []  # every organisation: none
    assert len(_every_question(rt, None, admin)) == 17  # every organisation (why_refused is always of one)
    assert len(_every_question(rt, orgs["B"], admin)) == 18
    with rt.session() as session:
        disable_staff(session, actor=team["admin"], staff_id=viewer, org_id=1)
    assert _every_question(rt, orgs["A"], viewer) == []  # disabled: nothing, read now
    with rt.read_db.connect() as conn, pytest.raises(NotAllowed):  # a customer of B explained as if of A
        D.why_refused(conn, rt.settings, user_key=f"o{orgs['B']}|MOBILE:{SHARED}", now=rt.clock(), configs={},
                      org_id=orgs["A"])


def test_the_console_scopes_the_dashboards_to_the_selected_organisation(rt, team, orgs, monkeypatch):
    monkeypatch.setattr(widgets, "selected_org", lambda: orgs["B"])
    at = on_page(rt, team["admin"], "pages/dash_usage.py")
    assert not at.exception
    assert at.selectbox(key="usage_tz").value == "Asia/Kolkata"  # the organisation's zone by default
    f = D.Filters(rt.clock().date() - timedelta(days=6), rt.clock().date(), "Asia/Kolkata", org_id=orgs["B"])
    totals = ask(rt, D.usage_totals, f)
    assert at.metric[0].value == f"{totals.requests:,}"
    assert int(at.dataframe[0].value["requests"].sum()) == totals.requests  # the table the CSV is made of
    # The platform admin's "All organisations": the sums, and one line per organisation.
    at.radio(key="usage_orgs").set_value(widgets.ALL_ORGS).run()
    assert not at.exception
    everyone = D.Filters(f.first, f.last, "UTC", org_id=None)
    total = ask(rt, D.usage_totals, everyone).requests
    assert at.metric[0].value == f"{total:,}"
    per_org = at.dataframe[0].value
    assert list(per_org["organisation"]) == ["Default", "Demo 2"]
    assert int(per_org["requests"].sum()) == total


@pytest.mark.parametrize("page", ["pages/dash_usage.py", "pages/dash_delivery.py", "pages/dash_limits.py"])
def test_a_forged_organisation_in_the_session_shows_nothing(rt, team, orgs, monkeypatch, page):
    monkeypatch.setattr(widgets, "selected_org", lambda: orgs["B"])  # vic belongs to org 1 only
    at = on_page(rt, team["viewer"], page)
    assert not at.exception
    assert "not a member of this organisation" in texts(at)
    assert not at.metric and not at.dataframe
    assert not [r for r in at.radio if r.key and r.key.endswith("_orgs")]


def test_a_viewer_gets_no_all_organisations_choice(rt, team, orgs):
    at = on_page(rt, team["viewer"], "pages/dash_limits.py")
    assert not at.exception and at.metric
    assert not [r for r in at.radio if r.key and r.key.endswith("_orgs")]
    shown = " ".join(str(d.value.to_csv()) for d in at.dataframe)
    assert "Demo 2" not in shown


def test_simulate_fills_several_organisations(rt):
    report = simulate(rt, days=2, users=50, per_day=30, seed=3, small=True, end=rt.clock(), orgs=3)
    assert report.generates
    slugs = {o.slug: o.id for o in rt.organisations().values()}
    assert set(slugs) == {"default", "demo-2", "demo-3"}
    per_org = {org: count(rt, "SELECT count(*) FROM otp_request WHERE org_id = :org", org=org)
               for org in slugs.values()}
    assert all(per_org.values()), per_org
    # Customers of demo-2 and demo-3 carry their organisation in their key (the engine made them).
    assert count(rt, "SELECT count(*) FROM otp_request WHERE org_id <> 1 AND user_key NOT LIKE 'o%|%'") == 0
    simulate(rt, days=1, users=50, per_day=5, seed=4, small=True, end=rt.clock(), orgs=3)  # made once
    assert len(rt.organisations()) == 3


def test_simulate_with_one_organisation_makes_none(rt):
    simulate(rt, days=1, users=50, per_day=10, seed=5, small=True, end=rt.clock())
    assert list(rt.organisations()) == [1]
    assert count(rt, "SELECT count(*) FROM otp_request WHERE org_id <> 1") == 0
