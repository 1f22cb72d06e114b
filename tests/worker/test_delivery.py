"""Messages reaching callbacks through a running pgnats-worker: the guide's example, several
callbacks, wildcards, two databases, failures, dropped callbacks, activation at commit."""

from __future__ import annotations

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
    wait_not_subscribed,
    wait_subscribed,
    wait_value,
)


def test_guide_example_reaches_the_callback(
    conn: Conn, nats_url: str, worker: WorkerProcess, db: str
) -> None:
    conn.execute(
        """
        CREATE TABLE message_log (
            id serial PRIMARY KEY, subject text, message text,
            received_at timestamptz DEFAULT now()
        );
        CREATE FUNCTION handle_demo_message(payload BYTEA)
        RETURNS void AS $$
        BEGIN
            INSERT INTO message_log (subject, message)
            VALUES ('demo.messages', convert_from(payload, 'UTF8'));

            RAISE NOTICE 'Background worker received: %', convert_from(payload, 'UTF8');
        END;
        $$ LANGUAGE plpgsql;
        """
    )
    conn.execute("SELECT nats_subscribe('demo.messages', 'handle_demo_message'::regproc::oid)")
    wait_subscribed(conn, "demo.messages")
    sent = [
        "Hello from background worker test!",
        "Message 1: Testing auto-processing",
        "Message 2: No manual polling needed",
        "Message 3: Background worker handles it all",
    ]
    publish(nats_url, "demo.messages", sent)
    wait_value(conn, "SELECT count(*) FROM message_log", 4)
    assert messages(conn) == sent
    status = conn.execute(
        "SELECT worker_active, subscribed, processed, failed, last_message_at IS NOT NULL "
        "FROM pgnats.subscription_status"
    ).fetchone()
    assert status == (True, True, 4, 0, True)
    # The callback's RAISE NOTICE reaches the worker's log, and the log names the database.
    worker.wait_for_log("NOTICE: Background worker received: Message 3")
    worker.wait_for_log(f"database={db} subject=demo.messages callback=handle_demo_message(bytea)")


def test_several_callbacks_on_one_subject_all_run(
    conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    make_log_table(conn, "first_cb", "first_log")
    make_log_table(conn, "second_cb", "second_log")
    conn.execute("SELECT nats_subscribe('orders.new', 'first_cb'::regproc)")
    conn.execute("SELECT nats_subscribe('orders.new', 'second_cb'::regproc)")
    wait_subscribed(conn, "orders.new")
    publish(nats_url, "orders.new", ["one", "two", "three"])
    wait_value(conn, "SELECT count(*) FROM second_log", 3)
    wait_value(conn, "SELECT count(*) FROM first_log", 3)
    assert messages(conn, "first_log") == messages(conn, "second_log") == ["one", "two", "three"]


def test_overlapping_subscriptions_each_get_every_message(
    conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    """A message matching several subscriptions of one database (ov.* and ov.a, and >)
    reaches all of them: the queue groups that keep a reload from processing a message
    twice must not also split messages between different subscriptions."""
    make_log_table(conn, "star_cb", "star_log")
    make_log_table(conn, "exact_cb", "exact_log")
    make_log_table(conn, "all_cb", "all_log")
    conn.execute("SELECT nats_subscribe('ov.*', 'star_cb'::regproc)")
    conn.execute("SELECT nats_subscribe('ov.a', 'exact_cb'::regproc)")
    conn.execute("SELECT nats_subscribe('ov.>', 'all_cb'::regproc)")
    for subject in ("ov.*", "ov.a", "ov.>"):
        wait_subscribed(conn, subject)
    sent = [f"m{number}" for number in range(20)]
    publish(nats_url, "ov.a", sent)
    for table in ("star_log", "exact_log", "all_log"):
        wait_value(conn, f"SELECT count(*) FROM {table}", 20)
        assert messages(conn, table) == sent
    queue_groups = scalar(conn, "SELECT nats_queue_group FROM pgnats.worker_status")
    assert str(queue_groups).startswith("pgnats.")


def test_wildcards(conn: Conn, nats_url: str, worker: WorkerProcess) -> None:
    make_log_table(conn, "created_cb", "created_log")
    make_log_table(conn, "logs_cb", "logs_log")
    conn.execute("SELECT nats_subscribe('events.*.created', 'created_cb'::regproc)")
    conn.execute("SELECT nats_subscribe('logs.>', 'logs_cb'::regproc)")
    wait_subscribed(conn, "events.*.created")
    wait_subscribed(conn, "logs.>")
    for subject in (
        "events.user.created",
        "events.order.created",
        "events.user.deleted",
        "events.created",
    ):
        publish(nats_url, subject, [subject])
    for subject in ("logs.error", "logs.info.app", "logs.debug.db.query", "logs"):
        publish(nats_url, subject, [subject])
    wait_value(conn, "SELECT count(*) FROM created_log", 2)
    wait_value(conn, "SELECT count(*) FROM logs_log", 3)
    assert sorted(messages(conn, "created_log")) == ["events.order.created", "events.user.created"]
    assert sorted(messages(conn, "logs_log")) == [
        "logs.debug.db.query",
        "logs.error",
        "logs.info.app",
    ]
    # A failure row names the subject the message was published to and the pattern.
    publish(nats_url, "events.fail.created", ["fail"])
    wait_value(conn, "SELECT count(*) FROM pgnats.subscription_failures", 1)
    row = conn.execute("SELECT subject, subscription FROM pgnats.subscription_failures").fetchone()
    assert row == ("events.fail.created", "events.*.created")


def test_same_subject_in_two_databases_reaches_both(
    stack: Stack, make_database: MakeDatabase, nats_url: str, worker: WorkerProcess
) -> None:
    first, second = make_database(), make_database()
    with admin_connect(stack, first) as one, admin_connect(stack, second) as two:
        for conn in (one, two):
            make_log_table(conn)
            conn.execute("SELECT nats_subscribe('shared.subject', 'log_message'::regproc)")
        wait_subscribed(one, "shared.subject")
        wait_subscribed(two, "shared.subject")
        publish(nats_url, "shared.subject", ["to both"])
        wait_value(one, "SELECT count(*) FROM message_log", 1)
        wait_value(two, "SELECT count(*) FROM message_log", 1)
    worker.wait_for_log(f"database={first}: serving this database")
    worker.wait_for_log(f"database={second}: serving this database")


def test_callback_that_inserts_then_raises_leaves_no_row_and_is_recorded(
    conn: Conn, nats_url: str, worker: WorkerProcess, db: str
) -> None:
    make_log_table(conn)
    conn.execute("SELECT nats_subscribe('work', 'log_message'::regproc)")
    wait_subscribed(conn, "work")
    publish(nats_url, "work", ["before", "fail", "after"])
    wait_value(conn, "SELECT count(*) FROM pgnats.subscription_failures", 1)
    wait_value(conn, "SELECT count(*) FROM message_log", 2)
    assert messages(conn) == ["before", "after"]  # the failed message's INSERT was rolled back
    failure = conn.execute(
        "SELECT subject, subscription, callback, role, payload, error, sqlstate, context, "
        "received_at <= failed_at FROM pgnats.subscription_failures"
    ).fetchone()
    assert failure is not None
    subject, subscription, callback, role, payload, error, sqlstate, context, ordered = failure
    assert (subject, subscription, callback, role) == (
        "work",
        "work",
        "log_message(bytea)",
        "postgres",
    )
    assert payload == b"fail"
    assert error == "refusing payload fail"
    assert sqlstate == "23514"
    assert context.startswith("PL/pgSQL function log_message(bytea) line")
    assert "pgnats_call" not in context
    assert ordered
    wait_value(conn, "SELECT processed || '/' || failed FROM pgnats.subscription_status", "2/1")
    worker.wait_for_log(
        f"database={db} subject=work callback=log_message(bytea) role=postgres: "
        "callback failed [23514] refusing payload fail"
    )
    # The payload can be replayed from the table once the cause is fixed.
    conn.execute("SELECT log_message('replayed'::bytea)")


def test_failures_in_a_big_batch_are_isolated(
    conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    make_log_table(conn)
    conn.execute("SELECT nats_subscribe('bulk', 'log_message'::regproc)")
    wait_subscribed(conn, "bulk")
    payloads = ["fail" if i % 100 == 7 else f"m{i}" for i in range(2000)]
    publish(nats_url, "bulk", payloads)
    wait_value(conn, "SELECT count(*) FROM message_log", 1980, timeout=30)
    wait_value(conn, "SELECT count(*) FROM pgnats.subscription_failures", 20)
    assert messages(conn) == [p for p in payloads if p != "fail"]
    wait_value(conn, "SELECT processed || '/' || failed FROM pgnats.subscription_status", "1980/20")


def test_binary_payloads_arrive_intact(conn: Conn, nats_url: str, worker: WorkerProcess) -> None:
    conn.execute("CREATE TABLE blobs (id serial, data bytea)")
    conn.execute(
        "CREATE FUNCTION keep(p bytea) RETURNS void LANGUAGE sql "
        "AS 'INSERT INTO blobs (data) VALUES (p)'"
    )
    conn.execute("SELECT nats_subscribe('blob', 'keep'::regproc)")
    wait_subscribed(conn, "blob")
    sent = [bytes(range(256)), b"", b"\x00" * 1000, "unicode ✓".encode()]
    publish(nats_url, "blob", sent)
    wait_value(conn, "SELECT count(*) FROM blobs", 4)
    assert [row[0] for row in conn.execute("SELECT data FROM blobs ORDER BY id")] == sent


def test_dropped_callback_leaves_the_others_on_its_subject_running(
    conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    make_log_table(conn, "survivor", "survivor_log")
    conn.execute('CREATE SCHEMA "Doomed Schema"')
    conn.execute("CREATE TABLE doomed_log (message text)")
    conn.execute(
        'CREATE FUNCTION "Doomed Schema"."Doomed CB"(p bytea) RETURNS void LANGUAGE sql '
        "AS $$INSERT INTO doomed_log VALUES (convert_from(p, 'UTF8'))$$"
    )
    conn.execute("CREATE FUNCTION plain_doomed(p bytea) RETURNS void LANGUAGE sql AS 'SELECT'")
    conn.execute("SELECT nats_subscribe('shared', 'survivor'::regproc)")
    conn.execute("""SELECT nats_subscribe('shared', '"Doomed Schema"."Doomed CB"'::regproc)""")
    conn.execute("SELECT nats_subscribe('shared', 'plain_doomed'::regproc)")
    wait_subscribed(conn, "shared")
    publish(nats_url, "shared", ["first"])
    wait_value(conn, "SELECT count(*) FROM survivor_log", 1)
    wait_value(conn, "SELECT count(*) FROM doomed_log", 1)
    conn.execute('DROP SCHEMA "Doomed Schema" CASCADE')
    conn.execute("DROP FUNCTION plain_doomed")
    assert scalar(conn, "SELECT count(*) FROM pgnats.subscriptions") == 1
    publish(nats_url, "shared", ["second", "third"])
    wait_value(conn, "SELECT count(*) FROM survivor_log", 3)
    assert messages(conn, "survivor_log") == ["first", "second", "third"]
    wait_value(conn, "SELECT processed || '/' || failed FROM pgnats.subscription_status", "3/0")


def test_message_queued_for_a_callback_dropped_meanwhile_is_recorded(
    stack: Stack, db: str, conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    """A message already queued for a function that is then dropped is recorded as a
    failure; the other callback on its subject is not held up."""
    make_log_table(conn, "survivor", "survivor_log")
    conn.execute("CREATE TABLE gate (x int)")
    conn.execute(
        "CREATE FUNCTION wait_at_gate(p bytea) RETURNS void LANGUAGE plpgsql "
        "AS 'BEGIN PERFORM count(*) FROM gate; END'"
    )
    conn.execute("CREATE FUNCTION doomed(p bytea) RETURNS void LANGUAGE sql AS 'SELECT'")
    conn.execute("SELECT nats_subscribe('hold', 'wait_at_gate'::regproc)")
    conn.execute("SELECT nats_subscribe('race', 'survivor'::regproc)")
    conn.execute("SELECT nats_subscribe('race', 'doomed'::regproc)")
    wait_subscribed(conn, "race")
    wait_subscribed(conn, "hold")
    with admin_connect(stack, db) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")
        publish(nats_url, "hold", ["wait"])  # this batch waits for the lock
        wait_value(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND application_name LIKE 'pgnats-worker dispatch%%'",
            1,
        )
        publish(nats_url, "race", ["b"])  # queued for both callbacks meanwhile
        conn.execute("DROP FUNCTION doomed")
        holder.execute("COMMIT")
    wait_value(conn, "SELECT count(*) FROM pgnats.subscription_failures", 1)
    publish(nats_url, "race", ["c"])
    wait_value(conn, "SELECT count(*) FROM survivor_log", 2)
    assert messages(conn, "survivor_log") == ["b", "c"]
    failure = conn.execute(
        "SELECT payload, sqlstate, callback, error FROM pgnats.subscription_failures"
    ).fetchone()
    assert failure is not None
    payload, sqlstate, callback, error = failure
    assert (payload, sqlstate) == (b"b", "42883")
    assert "no longer exists" in error
    assert callback == "doomed(bytea)"


def test_subscribe_and_unsubscribe_take_effect_at_commit(
    stack: Stack, db: str, conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    make_log_table(conn)
    conn.execute("SELECT nats_subscribe('warmup', 'log_message'::regproc)")
    wait_subscribed(conn, "warmup")
    with admin_connect(stack, db) as other:
        other.execute("BEGIN")
        other.execute("SELECT nats_subscribe('late', 'log_message'::regproc)")
        # Not committed: the worker does not know yet.
        publish(nats_url, "warmup", ["marker"])
        wait_value(conn, "SELECT count(*) FROM message_log", 1)
        publish(nats_url, "late", ["too early"])
        other.execute("COMMIT")
    wait_subscribed(conn, "late")
    publish(nats_url, "late", ["on time"])
    wait_value(conn, "SELECT count(*) FROM message_log", 2)
    conn.execute("SELECT nats_unsubscribe('late', 'log_message'::regproc)")
    wait_not_subscribed(conn, "late")
    publish(nats_url, "late", ["after unsubscribe"])
    publish(nats_url, "warmup", ["marker 2"])
    wait_value(conn, "SELECT count(*) FROM message_log", 3)
    assert messages(conn) == ["marker", "on time", "marker 2"]


def test_periodic_reconcile_catches_a_missed_notification(
    conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    make_log_table(conn)
    with conn.transaction():
        conn.execute("ALTER TABLE pgnats.subscriptions DISABLE TRIGGER notify_worker")
        conn.execute("SELECT nats_subscribe('quiet', 'log_message'::regproc)")
        conn.execute("ALTER TABLE pgnats.subscriptions ENABLE TRIGGER notify_worker")
    wait_subscribed(conn, "quiet", timeout=5)  # --reconcile-interval 1
    publish(nats_url, "quiet", ["found"])
    wait_value(conn, "SELECT count(*) FROM message_log", 1)


def test_database_created_later_is_served(
    stack: Stack, make_database: MakeDatabase, nats_url: str, worker: WorkerProcess
) -> None:
    worker.wait_for_log("pgnats-worker 1.0.0 starting")
    name = make_database()
    with admin_connect(stack, name) as conn:
        make_log_table(conn)
        conn.execute("SELECT nats_subscribe('newcomer', 'log_message'::regproc)")
        wait_subscribed(conn, "newcomer")
        publish(nats_url, "newcomer", ["welcome"])
        wait_value(conn, "SELECT count(*) FROM message_log", 1)


def test_drop_extension_and_database_while_the_worker_runs(
    stack: Stack, make_database: MakeDatabase, nats_url: str, worker: WorkerProcess
) -> None:
    doomed, kept = make_database(), make_database()
    with admin_connect(stack, doomed) as conn:
        conn.execute("CREATE FUNCTION cb(p bytea) RETURNS void LANGUAGE sql AS 'SELECT'")
        conn.execute("SELECT nats_subscribe('x', 'cb'::regproc)")
        wait_subscribed(conn, "x")
        conn.execute("DROP SERVER nats_server")
        conn.execute("DROP EXTENSION pgnats")
    worker.wait_for_log(f"database={doomed}: no longer served: the pgnats extension was dropped")
    with admin_connect(stack) as admin:
        admin.execute(f'DROP DATABASE "{doomed}" WITH (FORCE)')
    with admin_connect(stack, kept) as conn:
        make_log_table(conn)
        conn.execute("SELECT nats_subscribe('y', 'log_message'::regproc)")
        wait_subscribed(conn, "y")
        publish(nats_url, "y", ["still working"])
        wait_value(conn, "SELECT count(*) FROM message_log", 1)


def test_worker_status_view(conn: Conn, worker: WorkerProcess) -> None:
    wait_value(conn, "SELECT count(*) FROM pgnats.worker_status WHERE active AND nats_connected", 1)
    row = conn.execute(
        "SELECT pid, version, nats_connected, nats_server IS NOT NULL, queued, dropped "
        "FROM pgnats.worker_status"
    ).fetchone()
    assert row is not None
    assert row[0] == worker.pid()
    assert row[1:] == ("1.0.0", True, True, 0, 0)
    assert worker.stop() == 0
    # A clean stop removes the heartbeat: the view says no worker at once.
    assert scalar(conn, "SELECT count(*) FROM pgnats.worker_status") == 0


def test_status_view_without_a_worker(conn: Conn) -> None:
    conn.execute("CREATE FUNCTION cb(p bytea) RETURNS void LANGUAGE sql AS 'SELECT'")
    conn.execute("SELECT nats_subscribe('x', 'cb'::regproc)")
    row = conn.execute(
        "SELECT worker_active, subscribed, processed, failed, dropped "
        "FROM pgnats.subscription_status"
    ).fetchone()
    assert row == (False, False, 0, 0, 0)


def test_second_worker_stands_by(
    conn: Conn, nats_url: str, start_worker: StartWorker, worker: WorkerProcess, db: str
) -> None:
    make_log_table(conn)
    conn.execute("SELECT nats_subscribe('once', 'log_message'::regproc)")
    wait_subscribed(conn, "once")
    second = start_worker()
    second.wait_for_log(f"database={db}: another pgnats worker serves this database; standing by")
    publish(nats_url, "once", ["exactly once"])
    wait_value(conn, "SELECT count(*) FROM message_log", 1)
    # The first one stops: the second takes over.
    assert worker.stop() == 0
    second.wait_for_log(f"database={db}: serving this database", timeout=10)
    wait_subscribed(conn, "once")
    publish(nats_url, "once", ["still once"])
    wait_value(conn, "SELECT count(*) FROM message_log", 2)
    assert messages(conn) == ["exactly once", "still once"]
