"""The worker against failures of real servers: NATS and PostgreSQL restarts, servers down
at start, connections cut mid-batch and mid-COMMIT, a full queue, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import psycopg
import pytest
from pgnats_worker.dispatch import RoleDispatcher

from devstack.nats import NatsServer
from devstack.stack import Stack
from devstack.worker import WorkerProcess
from tests.conftest import MakeDatabase, admin_connect
from tests.worker.conftest import (
    Conn,
    StartWorker,
    make_log_table,
    messages,
    publish,
    scalar,
    wait_subscribed,
    wait_until,
    wait_value,
)

DISPATCH_ACTIVITY = (
    "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgnats-worker dispatch%%' "
    "AND state = 'active' AND query LIKE %s"
)


def dispatch_backend(conn: Conn, query_like: str, timeout: float = 10.0) -> int:
    """The pid of the worker's dispatch backend once it is running a query like ``query_like``."""
    found: list[int] = []

    def running() -> bool:
        row = conn.execute(DISPATCH_ACTIVITY, (query_like,)).fetchone()
        if row is not None:
            found.append(int(row[0]))
        return bool(found)

    wait_until(running, timeout, what=f"a dispatch backend running {query_like}")
    return found[0]


def test_nats_restart_while_the_worker_runs(
    stack: Stack,
    make_database: MakeDatabase,
    private_nats: NatsServer,
    start_worker: StartWorker,
) -> None:
    name = make_database(nats_url=private_nats.url)
    worker = start_worker()
    with admin_connect(stack, name) as conn:
        make_log_table(conn)
        conn.execute("SELECT nats_subscribe('restart.test', 'log_message'::regproc)")
        wait_subscribed(conn, "restart.test")
        publish(private_nats.url, "restart.test", ["before"])
        wait_value(conn, "SELECT count(*) FROM message_log", 1)
        private_nats.kill()
        worker.wait_for_log("disconnected from NATS; reconnecting")
        wait_value(conn, "SELECT nats_connected FROM pgnats.worker_status", False)
        private_nats.start()
        worker.wait_for_log("reconnected to NATS")
        wait_subscribed(conn, "restart.test")
        publish(private_nats.url, "restart.test", ["after"])
        wait_value(conn, "SELECT count(*) FROM message_log", 2)
        assert messages(conn) == ["before", "after"]


def test_worker_started_while_nats_is_down(
    stack: Stack,
    make_database: MakeDatabase,
    private_nats: NatsServer,
    start_worker: StartWorker,
) -> None:
    name = make_database(nats_url=private_nats.url)
    with admin_connect(stack, name) as conn:
        make_log_table(conn)
        conn.execute("SELECT nats_subscribe('late.nats', 'log_message'::regproc)")
        private_nats.stop()
        worker = start_worker()
        worker.wait_for_log(f"database={name}: serving this database")
        worker.wait_for_log("NATS error")  # the first attempts fail, and are retried
        assert scalar(conn, "SELECT subscribed FROM pgnats.subscription_status") is False
        time.sleep(1.0)
        private_nats.start()
        wait_subscribed(conn, "late.nats")
        publish(private_nats.url, "late.nats", ["finally"])
        wait_value(conn, "SELECT count(*) FROM message_log", 1)


def _publish_steadily(
    url: str, subject: str, count: int, rate: float, done: threading.Event
) -> None:
    async def send() -> None:
        import nats

        client = await nats.connect(url)
        for number in range(count):
            await client.publish(subject, str(number).encode())
            await client.flush()
            await asyncio.sleep(1 / rate)
        await client.close()

    try:
        asyncio.run(send())
    finally:
        done.set()


def test_postgres_restart_while_the_worker_runs(
    stack: Stack, db: str, nats_url: str, worker: WorkerProcess
) -> None:
    """Messages keep arriving while PostgreSQL restarts: each one is in the table once."""
    with admin_connect(stack, db) as conn:
        conn.execute("CREATE TABLE numbers (n integer NOT NULL)")
        conn.execute(
            "CREATE FUNCTION keep_number(p bytea) RETURNS void LANGUAGE sql "
            "AS $$INSERT INTO numbers VALUES (convert_from(p, 'UTF8')::integer)$$"
        )
        conn.execute("SELECT nats_subscribe('numbers', 'keep_number'::regproc)")
        wait_subscribed(conn, "numbers")
    total = 600
    done = threading.Event()
    publisher = threading.Thread(
        target=_publish_steadily, args=(nats_url, "numbers", total, 200.0, done), daemon=True
    )
    publisher.start()
    time.sleep(0.5)
    stack.postgres.stop()  # fast shutdown: the batch in flight is cut off
    time.sleep(1.0)  # messages keep arriving and wait in the worker
    stack.postgres.start()
    assert done.wait(30)
    with admin_connect(stack, db) as conn:
        wait_value(conn, "SELECT count(*) FROM numbers", total, timeout=30)
        assert scalar(conn, "SELECT count(DISTINCT n) FROM numbers") == total
        assert scalar(conn, "SELECT count(*) FROM pgnats.subscription_failures") == 0
    worker.wait_for_log("lost the control connection")


def test_worker_started_while_postgres_is_down(
    stack: Stack, db: str, nats_url: str, start_worker: StartWorker
) -> None:
    stack.postgres.stop()
    try:
        worker = start_worker()
        worker.wait_for_log("cannot connect to PostgreSQL, retrying")
    finally:
        stack.postgres.start()
    with admin_connect(stack, db) as conn:
        make_log_table(conn)
        conn.execute("SELECT nats_subscribe('pg.late', 'log_message'::regproc)")
        wait_subscribed(conn, "pg.late")
        publish(nats_url, "pg.late", ["served"])
        wait_value(conn, "SELECT count(*) FROM message_log", 1)


def test_batch_cut_off_before_commit_is_run_again(
    conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    make_log_table(conn)
    conn.execute(
        "CREATE FUNCTION slow_log(p bytea) RETURNS void LANGUAGE plpgsql AS $$"
        "BEGIN PERFORM log_message(p); PERFORM pg_sleep(0.5); END$$"
    )
    conn.execute("SELECT nats_subscribe('cut', 'slow_log'::regproc)")
    wait_subscribed(conn, "cut")
    publish(nats_url, "cut", ["once"])
    pid = dispatch_backend(conn, "SELECT * FROM pgnats._dispatch%")
    assert scalar(conn, "SELECT pg_terminate_backend(%s)", (pid,))
    wait_value(conn, "SELECT count(*) FROM message_log", 1)
    time.sleep(0.5)
    assert messages(conn) == ["once"]
    assert scalar(conn, "SELECT count(*) FROM pgnats.subscription_failures") == 0
    worker.wait_for_log("lost the connection to PostgreSQL; the batch will be run again")


def test_connection_lost_during_commit_is_resolved(
    conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    """COMMIT runs a slow deferred trigger; the backend is terminated during COMMIT. The
    worker asks PostgreSQL what became of the transaction (aborted) and runs it again."""
    make_log_table(conn)
    conn.execute(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$"
        "BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END$$"
    )
    conn.execute(
        "CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON message_log "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
    )
    conn.execute("SELECT nats_subscribe('commit.cut', 'log_message'::regproc)")
    wait_subscribed(conn, "commit.cut")
    publish(nats_url, "commit.cut", ["exactly once"])
    pid = dispatch_backend(conn, "COMMIT")
    assert scalar(conn, "SELECT pg_terminate_backend(%s)", (pid,))
    worker.wait_for_log("connection lost during COMMIT; transaction")
    wait_value(conn, "SELECT count(*) FROM message_log", 1)
    time.sleep(1.0)
    assert messages(conn) == ["exactly once"]
    assert "is aborted" in worker.log_text()


def test_resolving_commit_outcomes(stack: Stack, db: str) -> None:
    """pg_xact_status tells committed from aborted; an ID PostgreSQL never issued is unknown."""
    with admin_connect(stack, db) as conn:
        conn.execute("CREATE TABLE t (x int)")
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (1)")
            committed = str(scalar(conn, "SELECT pg_current_xact_id()"))
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute("INSERT INTO t VALUES (1)")
            aborted = str(scalar(conn, "SELECT pg_current_xact_id()"))
            conn.execute("SELECT 1/0")
        future = str(int(committed) + 1_000_000)

    async def resolve_all() -> list[str]:
        dispatcher = RoleDispatcher(
            database=db,
            conninfo=stack.postgres.dsn(db),
            target_role=10,  # the bootstrap superuser
            role_name="postgres",
            batch_size=10,
            on_done=lambda count, size: None,
        )
        try:
            return [await dispatcher._resolve(xid) for xid in (committed, aborted, future)]
        finally:
            await dispatcher._close()

    assert asyncio.run(resolve_all()) == ["committed", "aborted", "unknown"]


@pytest.mark.parametrize("bound", [["--queue-limit", "5"], ["--queue-bytes", "10"]])
def test_full_queue_drops_new_messages_visibly(
    stack: Stack, db: str, conn: Conn, nats_url: str, start_worker: StartWorker, bound: list[str]
) -> None:
    """Five two-byte messages fit (5 messages, 10 bytes); the sixth and later are dropped."""
    worker = start_worker(*bound)
    make_log_table(conn)
    conn.execute("CREATE TABLE gate (x int)")
    conn.execute(
        "CREATE FUNCTION gated(p bytea) RETURNS void LANGUAGE plpgsql AS $$"
        "BEGIN PERFORM count(*) FROM gate; PERFORM log_message(p); END$$"
    )
    conn.execute("SELECT nats_subscribe('flood', 'gated'::regproc)")
    wait_subscribed(conn, "flood")
    with admin_connect(stack, db) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")
        publish(nats_url, "flood", ["00"])
        dispatch_backend(conn, "SELECT * FROM pgnats._dispatch%")
        publish(nats_url, "flood", [f"{n:02d}" for n in range(1, 21)])
        worker.wait_for_log("queue full (5 messages, 10 bytes waiting for PostgreSQL): dropping")
        holder.execute("COMMIT")
    wait_value(conn, "SELECT count(*) FROM message_log", 5)
    assert messages(conn) == ["00", "01", "02", "03", "04"]
    wait_value(conn, "SELECT processed || '/' || dropped FROM pgnats.subscription_status", "5/16")
    wait_value(conn, "SELECT dropped FROM pgnats.worker_status", 16)


def test_sigterm_finishes_the_batch_in_flight_and_the_queue(
    conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    make_log_table(conn)
    conn.execute(
        "CREATE FUNCTION slow_log(p bytea) RETURNS void LANGUAGE plpgsql AS $$"
        "BEGIN PERFORM log_message(p); PERFORM pg_sleep(0.5); END$$"
    )
    conn.execute("SELECT nats_subscribe('term', 'slow_log'::regproc)")
    wait_subscribed(conn, "term")
    publish(nats_url, "term", ["in flight"])
    dispatch_backend(conn, "SELECT * FROM pgnats._dispatch%")
    publish(nats_url, "term", ["queued 1", "queued 2"])
    time.sleep(0.1)
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert messages(conn) == ["in flight", "queued 1", "queued 2"]
    assert scalar(conn, "SELECT count(*) FROM pgnats.worker_status") == 0
    assert "pgnats-worker stopped" in worker.log_text()


def test_sigterm_past_the_timeout_rolls_back_whole_and_records(
    conn: Conn, nats_url: str, start_worker: StartWorker
) -> None:
    worker = start_worker("--shutdown-timeout", "0.5")
    make_log_table(conn)
    conn.execute(
        "CREATE FUNCTION endless(p bytea) RETURNS void LANGUAGE plpgsql AS $$"
        "BEGIN PERFORM log_message(p); PERFORM pg_sleep(30); END$$"
    )
    conn.execute("SELECT nats_subscribe('endless', 'endless'::regproc)")
    wait_subscribed(conn, "endless")
    publish(nats_url, "endless", ["cut short"])
    dispatch_backend(conn, "SELECT * FROM pgnats._dispatch%")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert time.monotonic() - started < 8
    assert messages(conn) == []  # the INSERT before the sleep was rolled back
    failure = conn.execute(
        "SELECT payload, sqlstate, error FROM pgnats.subscription_failures"
    ).fetchone()
    assert failure == (
        b"cut short",
        "57P01",
        "the pgnats worker stopped before this message was processed",
    )
    assert "recorded in pgnats.subscription_failures" in worker.log_text()


def test_reload_notifications(
    stack: Stack,
    db: str,
    conn: Conn,
    nats_url: str,
    private_nats: NatsServer,
    worker: WorkerProcess,
) -> None:
    """NOTIFY pgnats 'reload' (what pgnats_reload_conf() sends) makes the worker read the
    settings again; 'reload_force' makes it reconnect."""
    make_log_table(conn)
    conn.execute("SELECT nats_subscribe('moving', 'log_message'::regproc)")
    wait_subscribed(conn, "moving")
    conn.execute(f"ALTER SERVER nats_server OPTIONS (SET nats_url '{private_nats.url}')")
    conn.execute("NOTIFY pgnats, 'reload'")
    worker.wait_for_log(f"database={db}: reconnecting to NATS (settings changed)")
    wait_value(conn, "SELECT nats_server FROM pgnats.worker_status", private_nats.url)
    wait_subscribed(conn, "moving")
    publish(private_nats.url, "moving", ["on the new server"])
    wait_value(conn, "SELECT count(*) FROM message_log", 1)
    conn.execute("NOTIFY pgnats, 'reload_force'")
    worker.wait_for_log(f"database={db}: reconnecting to NATS (pgnats_reload_conf_force())")
    wait_until(
        lambda: worker.log_text().count(f"connected to NATS {private_nats.url}") >= 2,
        what="a second connection",
    )
    wait_subscribed(conn, "moving")
    publish(private_nats.url, "moving", ["after force"])
    wait_value(conn, "SELECT count(*) FROM message_log", 2)


def test_worker_refuses_to_run_without_superuser(
    stack: Stack, conn: Conn, start_worker: StartWorker
) -> None:
    conn.execute("CREATE ROLE pgnats_not_super LOGIN")
    try:
        worker = start_worker(dsn=stack.postgres.url(user="pgnats_not_super"))
        assert worker.wait(15) == 2
        assert "pgnats-worker must connect as a superuser" in worker.log_text()
    finally:
        conn.execute("DROP ROLE pgnats_not_super")
