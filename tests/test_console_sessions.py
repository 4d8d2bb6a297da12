"""Server-side console sessions: a token resumes its person until idle expiry, sign-out or a disabled account."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from core.admin.console_sessions import end_session, resume_session, start_session
from core.admin.staff import disable_staff
from core.clock import utcnow


def test_a_token_resumes_until_idle_expiry_and_each_resume_extends_it(rt, team):
    now = utcnow()
    with rt.session() as db:
        token = start_session(db, identity=team["editor"], idle_minutes=30, now=now)
        assert resume_session(db, token=token, idle_minutes=30, now=now + timedelta(minutes=29)) == team["editor"]
        # The resume at minute 29 pushed the expiry to minute 59.
        assert resume_session(db, token=token, idle_minutes=30, now=now + timedelta(minutes=58)) == team["editor"]
        assert resume_session(db, token=token, idle_minutes=30, now=now + timedelta(minutes=89)) is None
        assert resume_session(db, token="not-a-token", idle_minutes=30, now=now) is None


def test_only_the_hash_of_the_token_is_stored(rt, team):
    with rt.session() as db:
        token = start_session(db, identity=team["editor"], idle_minutes=30, now=utcnow())
    with rt.db.connect() as conn:
        stored = conn.execute(text("SELECT token_hash FROM console_session")).scalars().all()
    assert len(stored) == 1 and token not in stored[0] and len(stored[0]) == 64


def test_sign_out_ends_the_token_at_once(rt, team):
    now = utcnow()
    with rt.session() as db:
        token = start_session(db, identity=team["editor"], idle_minutes=30, now=now)
        end_session(db, identity=team["editor"], token=token)
        assert resume_session(db, token=token, idle_minutes=30, now=now) is None


def test_a_disabled_account_cannot_resume_and_a_changed_role_is_read_now(rt, team):
    from core.admin.staff import set_role
    now = utcnow()
    with rt.session() as db:
        editor = start_session(db, identity=team["editor"], idle_minutes=30, now=now)
        viewer = start_session(db, identity=team["viewer"], idle_minutes=30, now=now)
        set_role(db, actor=team["admin"], staff_id=team["editor"].id, role="approver", org_id=1)
        disable_staff(db, actor=team["admin"], staff_id=team["viewer"].id, org_id=1)
        assert resume_session(db, token=editor, idle_minutes=30, now=now).role == "approver"
        assert resume_session(db, token=viewer, idle_minutes=30, now=now) is None
