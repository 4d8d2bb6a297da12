"""Group commit (core.db.groupcommit): engine writes arriving together share one commit, on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from core import errors as E
from core.db.engine import make_engine
from core.db.groupcommit import Writer
from core.enums import Action
from core.errors import OtpError
from core.runtime import Runtime, run
from core.services.generation import generate
from core.services.validation import validate
from tests.conftest import code_sent_to, configure

BODY = {"entityType": "MOBILE", "action": "COUPON"}
# SQLite's own way of batching (per loop turn, the write lock waited for on the loop): these run on SQLite alone.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _phone(i: int) -> str:
    return f"+9199770{i:05d}"


def _commits(rt) -> list[int]:
    count = [0]
    event.listen(rt.db, "commit", lambda _conn: count.__setitem__(0, count[0] + 1))
    return count


def _count(rt, sql: str) -> int:
    with rt.read_db.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def test_one_turn_of_generates_is_one_commit_and_every_answer_follows_it(rt, db_url):
    commits = _commits(rt)

    async def burst():
        return await asyncio.gather(*(generate(rt, {**BODY, "entityValue": _phone(i)}, org_id=1) for i in range(20)))

    results = run(burst())
    assert len({r.request_id for r in results}) == 20
    # Every request answered after its writes were durable: a new connection sees all of them.
    assert _count(rt, "SELECT count(*) FROM otp_request") == 20
    assert _count(rt, "SELECT count(*) FROM outbox_message") == 20
    if db_url.startswith("sqlite"):
        assert commits[0] == 1
    else:  # one batch (a COMMIT sent in its pipeline, core.db.engine.pipelined_transaction), a savepoint each
        assert _count(rt, "SELECT count(DISTINCT xmin::text) FROM otp_request") == 20


def test_a_refusal_in_a_shared_commit_undoes_only_its_own_writes(rt):
    # The action's cap refuses after the service-wide daily count was bumped: that bump must be undone.
    configure(rt, Action.COUPON, daily_cap=1)
    first = run(generate(rt, {**BODY, "entityValue": _phone(1)}, org_id=1))

    async def burst():
        return await asyncio.gather(
            generate(rt, {**BODY, "entityValue": _phone(1)}, org_id=1),  # over the daily limit: refused
            generate(rt, {**BODY, "entityValue": _phone(2)}, org_id=1),
            generate(rt, {**BODY, "entityValue": _phone(3)}, org_id=1),
            return_exceptions=True)

    refused, second, third = run(burst())
    assert isinstance(refused, OtpError) and refused.problems[0].code == E.RATE_LIMITED
    assert not isinstance(second, Exception) and not isinstance(third, Exception)
    assert _count(rt, "SELECT count(*) FROM otp_request") == 3  # first, second, third; none for the refusal
    assert _count(rt, "SELECT count(*) FROM limit_event WHERE limit_type = 'action_daily'") == 1
    assert _count(rt, "SELECT max(count) FROM usage_counter WHERE scope = 'daily:*'") == 1  # never 2
    assert first.request_id < second.request_id


def test_generate_and_validate_in_one_turn_each_see_the_others_writes_in_order(rt, db_url):
    run(generate(rt, {**BODY, "entityValue": _phone(5)}, org_id=1))
    code = code_sent_to(rt, _phone(5))
    wrong = "0" * len(code) if code != "0" * len(code) else "1" * len(code)

    async def burst():
        return await asyncio.gather(
            validate(rt, {**BODY, "entityValue": _phone(5), "code": wrong}, org_id=1),
            validate(rt, {**BODY, "entityValue": _phone(5), "code": code}, org_id=1),
            validate(rt, {**BODY, "entityValue": _phone(5), "code": code}, org_id=1))

    outcomes = [r.valid for r in run(burst())]
    if db_url.startswith("sqlite"):
        assert outcomes == [False, True, False]  # single use holds inside one shared transaction, in order
        assert _count(rt, "SELECT failed_attempts FROM otp_code") == 1
    else:  # each its own transaction, in threads of their own: any order, but the code is used once
        assert outcomes[0] is False and outcomes.count(True) == 1
        assert _count(rt, "SELECT state FROM otp_code") == "used"
        assert _count(rt, "SELECT failed_attempts FROM otp_code") in (0, 1)  # 0: the wrong guess came after


@SQLITE_ONLY
def test_a_second_writer_on_the_loop_thread_fails_at_once_instead_of_waiting_for_itself(rt, db_url):
    async def scenario():
        writer = rt.writer
        joined = asyncio.ensure_future(writer.run(lambda conn: conn.execute(text(
            "INSERT INTO limit_event (org_id, created_at, user_key, action, limit_type) "
            "VALUES (1, '2026-11-27 10:00:00.000000', 'u', 'COUPON', 'test')"))))
        await asyncio.sleep(0)  # the batch is open now, its commit scheduled for the next turn
        with pytest.raises(RuntimeError, match="group commit"):
            with rt.db.begin() as conn:
                conn.execute(text("DELETE FROM limit_event"))
        with writer.within() as conn:  # the supported way for synchronous code: joins the batch
            conn.execute(text("UPDATE limit_event SET limit_type = 'joined'"))
        await joined

    run(scenario())
    assert _count(rt, "SELECT count(*) FROM limit_event WHERE limit_type = 'joined'") == 1


@SQLITE_ONLY
def test_a_cancelled_member_does_not_cancel_the_others_commit(rt, db_url):
    async def scenario():
        tasks = [asyncio.ensure_future(generate(rt, {**BODY, "entityValue": _phone(20 + i)}, org_id=1)) for i in range(3)]
        await asyncio.sleep(0)  # every task has run its writes and waits for the commit
        tasks[0].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(scenario())
    assert isinstance(results[0], asyncio.CancelledError)
    assert [type(r).__name__ for r in results[1:]] == ["GenerateResult", "GenerateResult"]
    # The cancelled request's writes were already in the shared transaction: they commit too, whole.
    assert _count(rt, "SELECT count(*) FROM otp_request") == 3
    assert _count(rt, "SELECT count(*) FROM delivery") == 3


def test_a_failed_commit_fails_every_member_and_keeps_nothing(tmp_path):
    """A commit that fails (the disk, a constraint checked at commit) must reach every request that shared it."""
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")  # the service's set-up: foreign keys on
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        conn.execute(text("CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                          "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"))
    writer = Writer(engine, group=True)

    async def scenario():
        good = writer.run(lambda conn: conn.execute(text("INSERT INTO parent (id) VALUES (1)")))
        bad = writer.run(lambda conn: conn.execute(text("INSERT INTO child (parent_id) VALUES (99)")))
        return await asyncio.gather(good, bad, return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, Exception) and "FOREIGN KEY" in str(r) for r in results), results
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM parent")).scalar_one() == 0
    engine.dispose()


@SQLITE_ONLY
def test_configuration_reseeded_on_the_loop_thread_joins_the_open_batch(rt, db_url):
    configure(rt, Action.POINTS, validity_minutes=7)
    with rt.db.begin() as conn:
        conn.execute(text("DELETE FROM action_config WHERE action = 'POINTS'"))
    rt.configuration_changed()

    async def burst():
        return await asyncio.gather(generate(rt, {**BODY, "entityValue": _phone(40)}, org_id=1),
                                    generate(rt, {**BODY, "action": "POINTS", "entityValue": _phone(41)}, org_id=1))

    coupon, points = run(burst())  # the POINTS row is re-seeded while COUPON's batch is open
    assert points.request_id and coupon.request_id
    assert _count(rt, "SELECT count(*) FROM action_config WHERE action = 'POINTS'") == 1


def test_two_runtimes_on_one_database_share_its_batches(rt):
    """The demo traffic runs a runtime of its own on the console's engine: their writes must not collide."""
    other = Runtime(rt.settings, engine=rt.db, clock=rt.clock, prepare=False)
    assert other.writer is rt.writer

    async def burst():
        return await asyncio.gather(generate(rt, {**BODY, "entityValue": _phone(50)}, org_id=1),
                                    generate(other, {**BODY, "entityValue": _phone(51)}, org_id=1))

    run(burst())
    assert _count(rt, "SELECT count(*) FROM otp_request") == 2


def test_an_error_that_ends_sqlites_transaction_fails_the_batch_it_broke_and_spares_later_work(tmp_path):
    """A full disk makes SQLite roll back the whole transaction, not one savepoint: whoever had joined the batch
    must fail (their writes are gone), and work after it must get a new batch, not run outside any transaction."""
    engine = make_engine(f"sqlite:///{tmp_path / 'full.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE u (x INTEGER)"))
        conn.execute(text("CREATE TABLE big (x BLOB)"))
        pages = conn.execute(text("PRAGMA page_count")).scalar_one()
    event.listen(engine, "connect", lambda dbapi, _record: dbapi.execute(f"PRAGMA max_page_count={pages + 10}"))
    engine.dispose()
    writer = Writer(engine, group=True)

    def insert(value):
        return lambda conn: conn.execute(text("INSERT INTO u VALUES (:x)"), {"x": value})

    async def scenario():
        return await asyncio.gather(
            writer.run(insert(1)),
            writer.run(lambda conn: conn.execute(text("INSERT INTO big VALUES (:b)"), {"b": b"x" * 400_000})),
            writer.run(insert(3)), return_exceptions=True)

    first, full, later = asyncio.run(scenario())
    assert isinstance(full, DBAPIError) and "full" in str(full)
    assert isinstance(first, DBAPIError)  # joined the broken batch: its write is gone, and it says so
    assert not isinstance(later, Exception)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT x FROM u")).scalars().all() == [3]
    engine.dispose()


class _LockHolder:
    """Another connection to the same SQLite file holding its write lock until release() (a second writer)."""

    def __init__(self, path) -> None:  # type: ignore[no-untyped-def]
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
        self.conn.close()


def _insert(value: int):  # type: ignore[no-untyped-def]
    return lambda conn: conn.execute(text("INSERT INTO u VALUES (:x)"), {"x": value})


def _table_u(tmp_path, lock_timeout: float):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'lock.db'}", write_lock_timeout=lock_timeout)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE u (x INTEGER)"))
    return engine


def test_writes_wait_for_a_lock_held_elsewhere_without_blocking_the_loop_and_share_one_commit(tmp_path):
    engine = _table_u(tmp_path, lock_timeout=30)
    writer = Writer(engine, group=True)
    commits = [0]
    event.listen(engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    holder = _LockHolder(tmp_path / "lock.db")

    async def scenario() -> tuple[list[float], list]:
        loop = asyncio.get_running_loop()
        writes = asyncio.gather(*(writer.run(_insert(i)) for i in range(3)))
        gaps, last = [], loop.time()
        while len(gaps) < 20:  # the loop keeps turning while the writes wait for the lock
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()
        assert not writes.done()
        holder.release()
        return gaps, await writes

    gaps, _ = asyncio.run(scenario())
    assert max(gaps) < 0.5, gaps  # a busy wait on the loop would have lasted the whole 30 s busy timeout
    assert commits[0] == 1  # the three waiters joined the one batch opened when the lock came
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM u")).scalar_one() == 3
    engine.dispose()


def test_a_lock_held_past_the_bound_fails_every_waiter_after_the_bound_and_keeps_nothing(tmp_path):
    bound = 0.3
    engine = _table_u(tmp_path, lock_timeout=bound)
    writer = Writer(engine, group=True)
    holder = _LockHolder(tmp_path / "lock.db")

    async def scenario() -> tuple[list, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks = [asyncio.ensure_future(writer.run(_insert(i))) for i in range(3)]
        await asyncio.sleep(0)
        tasks[0].cancel()  # a request gone while waiting: the others still get their answer
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        return outcomes, loop.time() - started

    try:
        outcomes, waited = asyncio.run(scenario())
    finally:
        holder.release()
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert all(isinstance(o, DBAPIError) and "database is locked" in str(o) for o in outcomes[1:]), outcomes
    assert bound <= waited < bound + 0.5
    # Nothing was kept and no transaction stayed open: the lock is free at once, and a write goes through.
    check = sqlite3.connect(tmp_path / "lock.db", isolation_level=None, timeout=0)
    check.execute("BEGIN IMMEDIATE")
    check.execute("ROLLBACK")
    check.close()
    asyncio.run(writer.run(_insert(9)))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT x FROM u")).scalars().all() == [9]
    engine.dispose()



def test_a_commit_runs_off_the_loop_and_writes_arriving_meanwhile_share_the_next_one(tmp_path):
    """With synchronous=FULL a COMMIT waits for an fsync: the loop must go on meanwhile, and the writes that
    arrive during it wait for it (it holds the write lock) and then commit together."""
    engine = _table_u(tmp_path, lock_timeout=30)
    writer = Writer(engine, group=True)
    commit_may_end, commits = threading.Event(), []

    def slow_commit(_conn) -> None:  # type: ignore[no-untyped-def]
        commits.append(threading.current_thread() is threading.main_thread())
        if len(commits) == 1:
            commit_may_end.wait(10)  # the first commit lasts until the test has seen the loop turn

    event.listen(engine, "commit", slow_commit)

    async def scenario() -> tuple[bool, bool]:
        first = asyncio.gather(*(writer.run(_insert(i)) for i in range(3)))
        while not commits:  # the first batch's commit has begun
            await asyncio.sleep(0.001)
        second = asyncio.gather(*(writer.run(_insert(10 + i)) for i in range(3)))
        for _ in range(5):
            await asyncio.sleep(0)  # the loop turns while the first commit is still going on
        first_waited, second_waited = not first.done(), not second.done()
        commit_may_end.set()
        await asyncio.gather(first, second)
        return first_waited, second_waited

    first_waited, second_waited = asyncio.run(scenario())
    assert first_waited and second_waited
    assert commits == [False, False]  # two commits, neither on the loop's thread
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM u")).scalar_one() == 6
    engine.dispose()


# PostgreSQL's batches (core.db.groupcommit.Writer._queued): units queued per loop, one transaction per batch.

@pytest.fixture
def pg_writer(pg_schema_url):
    """A Writer on the test schema's PostgreSQL engine, and a scratch table (k unique) emptied for the test."""
    engine = make_engine(pg_schema_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS gc_probe (k INTEGER PRIMARY KEY, v INTEGER)"))
        conn.execute(text("TRUNCATE gc_probe"))
    yield Writer(engine), engine
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE gc_probe"))
    engine.dispose()


def _pg_insert(k: int, *, then_raise: bool = False):
    """A unit of work: insert row k, return its transaction's id (top-level, even inside a savepoint)."""
    def work(conn):
        conn.execute(text("INSERT INTO gc_probe (k) VALUES (:k)"), {"k": k})
        if then_raise:
            raise ValueError(f"unit {k} refused")
        return conn.execute(text("SELECT txid_current()")).scalar_one()
    return work


def _keys(engine) -> list[int]:
    with engine.connect() as conn:
        return [k for (k,) in conn.execute(text("SELECT k FROM gc_probe ORDER BY k"))]


@pytest.mark.postgresql
def test_postgresql_units_arriving_together_share_one_commit_and_a_refusal_undoes_only_its_own(pg_writer):
    writer, engine = pg_writer

    async def burst():
        return await asyncio.gather(*(writer.run(_pg_insert(k, then_raise=k == 3)) for k in range(10)),
                                    return_exceptions=True)

    results = asyncio.run(burst())
    assert isinstance(results[3], ValueError)
    txids = {r for i, r in enumerate(results) if i != 3}
    assert len(txids) == 1, txids  # one transaction (each unit its own would be ten)
    assert _keys(engine) == [0, 1, 2, 4, 5, 6, 7, 8, 9]  # committed before the answers; unit 3's row undone


@pytest.mark.postgresql
def test_postgresql_a_statement_error_in_a_batch_fails_its_own_unit_alone(pg_writer):
    """A failed statement aborts psycopg's pipeline (its error may surface in a later unit's read): the batch is
    run again unit by unit, so that only the unit at fault fails and the others keep their writes."""
    writer, engine = pg_writer
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO gc_probe (k) VALUES (5)"))

    async def burst():
        return await asyncio.gather(*(writer.run(_pg_insert(k)) for k in range(3, 8)), return_exceptions=True)

    results = asyncio.run(burst())
    assert isinstance(results[2], DBAPIError) and "duplicate key" in str(results[2])
    assert [type(r) for i, r in enumerate(results) if i != 2] == [int] * 4
    assert _keys(engine) == [3, 4, 5, 6, 7]


@pytest.mark.postgresql
def test_postgresql_a_unit_waiting_for_a_lock_does_not_hold_up_the_others(pg_writer):
    """One batch runs at a time per loop; one stuck on a row lock another transaction holds must not stall the
    worker's other writes (another batch starts beside it after Writer.STALLED_AFTER)."""
    writer, engine = pg_writer
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO gc_probe (k, v) VALUES (1, 0)"))
    blocker = engine.connect()
    blocker.begin()
    blocker.execute(text("SELECT * FROM gc_probe WHERE k = 1 FOR UPDATE"))

    def bump(conn):
        conn.execute(text("UPDATE gc_probe SET v = v + 1 WHERE k = 1"))

    async def scenario():
        stuck = asyncio.ensure_future(writer.run(bump))
        try:
            with engine.connect() as probe:  # the update is waiting for the blocker's lock
                while not probe.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar_one():
                    await asyncio.sleep(0.01)
            free = await asyncio.wait_for(writer.run(_pg_insert(2)), timeout=10)
            assert not stuck.done()
        finally:
            blocker.commit()  # (also when the assertions fail: the stuck unit's thread must end)
            blocker.close()
            await stuck
        return free

    assert isinstance(asyncio.run(scenario()), int)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM gc_probe WHERE k = 1")).scalar_one() == 1
    assert _keys(engine) == [1, 2]
