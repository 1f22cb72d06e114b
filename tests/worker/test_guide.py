"""The seed guide, end to end: docs/background-workers-guide.md, run as written.

Every ```sql block of the guide is taken from the file itself and run with psql (stopping at
the first error), in the order a reader follows it, with the worker running. The only things
added are what the guide leaves to its reader: the tables and helper functions it uses
without defining them, the messages its "Test Results" show, and waits for the worker. The
``\\!`` shell lines are skipped (they read one machine's log file); the worker's log is read
instead. The guide's server points at nats://localhost:4222; the test's NATS listens on a
free port, so the server is then moved there with ALTER SERVER.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest

from devstack.guide import guide_blocks, guide_sql, run_psql
from devstack.stack import Stack
from devstack.worker import WorkerProcess
from tests.conftest import MakeDatabase, admin_connect
from tests.nats_helpers import NatsSide
from tests.worker.conftest import Conn, scalar, wait_not_subscribed, wait_subscribed, wait_value

# What the guide's callbacks write to, created the way a reader of the guide would.
READER_TABLES = """
CREATE TABLE message_log (
    id serial PRIMARY KEY,
    subject text,
    message text,
    received_at timestamptz DEFAULT clock_timestamp()
);
CREATE TABLE orders (order_id integer PRIMARY KEY, customer text, amount numeric(10, 2));
CREATE TABLE audit_log (event_data jsonb, received_at timestamptz);
CREATE TABLE metrics (metric_name text, value numeric, timestamp timestamp);
CREATE TABLE metric_aggregates (metric_name text PRIMARY KEY, samples integer);
CREATE FUNCTION update_metric_aggregates(name text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO metric_aggregates VALUES (name, 1)
    ON CONFLICT (metric_name) DO UPDATE SET samples = metric_aggregates.samples + 1
$$;
CREATE TABLE data_table (value text);
CREATE TABLE error_log (error_message text, payload bytea, logged_at timestamptz DEFAULT now());
CREATE TABLE created_events (payload text);
CREATE TABLE all_logs (payload text);
CREATE FUNCTION handle_created(payload bytea) RETURNS void LANGUAGE sql AS $$
    INSERT INTO created_events VALUES (convert_from(payload, 'UTF8'))
$$;
CREATE FUNCTION handle_all_logs(payload bytea) RETURNS void LANGUAGE sql AS $$
    INSERT INTO all_logs VALUES (convert_from(payload, 'UTF8'))
$$;
"""

# The four messages of the guide's "Test Results".
TEST_RESULT_MESSAGES = [
    "Hello from background worker test!",
    "Message 1: Testing auto-processing",
    "Message 2: No manual polling needed",
    "Message 3: Background worker handles it all",
]

# Blocks that are templates rather than statements: run in a form that keeps them as written.
TEMPLATE_HEADINGS = {"Function Signature", "Converting Payload"}


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _psql(stack: Stack, dbname: str, sql: str) -> str:
    return run_psql(stack.postgres.url(dbname), sql)


def _publish_text(conn: Conn, subject: str, message: str) -> None:
    conn.execute("SELECT nats_publish_text(%s, %s)", (subject, message))


@pytest.fixture
def guide_db(make_database: MakeDatabase) -> str:
    """A database with the extension but no foreign server: the guide creates it."""
    return make_database(server=False)


def _setup_as_written(stack: Stack, dbname: str, conn: Conn) -> None:
    """The guide's "Setup" section, then the server moved to the test's NATS."""
    _psql(stack, dbname, guide_sql("1. Foreign Server Configuration"))
    assert scalar(conn, "SELECT srvoptions::text FROM pg_foreign_server") == (
        "{nats_url=nats://localhost:4222}"
    )
    conn.execute(f"ALTER SERVER nats_server OPTIONS (SET nats_url '{stack.nats.url}')")
    conn.execute("SELECT pgnats_reload_conf()")
    conn.execute(READER_TABLES)
    _psql(stack, dbname, guide_sql("2. Callback Function"))
    _psql(stack, dbname, guide_sql("3. Subscription"))


def test_every_sql_block_of_the_guide_is_covered() -> None:
    """A new block in the guide must be added to this module (or to the templates)."""
    covered = {
        "1. Foreign Server Configuration",
        "2. Callback Function",
        "3. Subscription",
        "Active Subscription",
        "Example 1: Order Processing",
        "Example 2: Audit Logging",
        "Example 3: Data Transformation",
        "Send Test Messages",
        "Publish JSON Data",
        "List All Active Subscriptions",
        "Unsubscribe from a Subject",
        "Reload Configuration",
        "Error Handling",
        "Check Background Worker Status",
        "Monitor Message Processing",
        "Check NATS Connection",
        "Wildcards Supported",
        "Background Worker Not Starting",
        "Messages Not Being Processed",
        "Check for Errors",
        "Advanced: Multiple Callbacks per Subject",
        "Complete Example: User Registration System",
        *TEMPLATE_HEADINGS,
    }
    assert {block.heading for block in guide_blocks()} == covered


def test_guide_walkthrough(
    stack: Stack, guide_db: str, worker: WorkerProcess, nats_side: NatsSide
) -> None:
    with admin_connect(stack, guide_db) as conn:
        _setup_as_written(stack, guide_db, conn)

        # "Current Status": the subscription is listed as the guide shows it.
        listing = _psql(stack, guide_db, guide_sql("Active Subscription"))
        assert re.search(r"demo\.messages\s*\|\s*handle_demo_message\(bytea\)", listing), listing
        wait_subscribed(conn, "demo.messages")

        # "Test Results": the four messages, processed in order.
        for message in TEST_RESULT_MESSAGES:
            _publish_text(conn, "demo.messages", message)
        wait_value(conn, "SELECT count(*) FROM message_log", 4)
        rows = conn.execute("SELECT subject, message FROM message_log ORDER BY id").fetchall()
        assert rows == [("demo.messages", message) for message in TEST_RESULT_MESSAGES]
        worker.wait_for_log("Background worker received: Message 3")

        # "Creating More Subscriptions": examples 1 to 3, as written (each ends with a reload).
        for heading in (
            "Example 1: Order Processing",
            "Example 2: Audit Logging",
            "Example 3: Data Transformation",
        ):
            _psql(stack, guide_db, guide_sql(heading))
        for subject in ("orders.new", "audit.*", "metrics.incoming"):
            wait_subscribed(conn, subject)

        # "Testing Your Subscriptions": both blocks as written.
        output = _psql(stack, guide_db, guide_sql("Send Test Messages"))
        _psql(stack, guide_db, guide_sql("Publish JSON Data"))
        wait_value(conn, "SELECT count(*) FROM message_log WHERE message = 'Test message'", 1)
        wait_value(conn, "SELECT count(*) FROM orders", 1)
        assert conn.execute("SELECT order_id, customer, amount::text FROM orders").fetchone() == (
            123,
            "John Doe",
            "99.99",
        )
        worker.wait_for_log("Order 123 processed")
        assert "(1 row)" in output  # the guide's check query returned the latest row

        _publish_text(conn, "audit.login", '{"user": "john", "action": "login"}')
        _publish_text(conn, "audit.user.deleted", '{"not": "matched: audit.* is one token"}')
        _publish_text(
            conn,
            "metrics.incoming",
            '{"name": "cpu", "value": 0.75, "timestamp": "2024-01-01 10:00:00"}',
        )
        wait_value(conn, "SELECT count(*) FROM metric_aggregates WHERE samples = 1", 1)
        wait_value(conn, "SELECT count(*) FROM audit_log", 1)
        assert scalar(conn, "SELECT event_data->>'action' FROM audit_log") == "login"
        assert scalar(conn, "SELECT value::text FROM metrics WHERE metric_name = 'cpu'") == "0.75"

        # "NATS Subject Patterns": the wildcard subscriptions as written.
        _psql(stack, guide_db, guide_sql("Wildcards Supported"))
        wait_subscribed(conn, "events.*.created")
        wait_subscribed(conn, "logs.>")
        for subject in ("events.user.created", "events.order.created", "events.user.deleted"):
            _publish_text(conn, subject, subject)
        for subject in ("logs.error", "logs.info.app", "logs.debug.db.query", "logs"):
            _publish_text(conn, subject, subject)
        wait_value(conn, "SELECT count(*) FROM all_logs", 3)
        wait_value(conn, "SELECT count(*) FROM created_events", 2)
        assert {row[0] for row in conn.execute("SELECT payload FROM created_events")} == {
            "events.user.created",
            "events.order.created",
        }
        assert {row[0] for row in conn.execute("SELECT payload FROM all_logs")} == {
            "logs.error",
            "logs.info.app",
            "logs.debug.db.query",
        }

        # "Error Handling": the safe callback, subscribed by the reader; a payload that is
        # not UTF-8 lands in error_log, good ones in data_table.
        _psql(stack, guide_db, guide_sql("Error Handling"))
        conn.execute("SELECT nats_subscribe('data.incoming', 'safe_callback'::regproc)")
        wait_subscribed(conn, "data.incoming")
        _publish_text(conn, "data.incoming", "good 1")
        conn.execute("SELECT nats_publish_binary('data.incoming', '\\xff00'::bytea)")
        _publish_text(conn, "data.incoming", "good 2")
        wait_value(conn, "SELECT count(*) FROM data_table", 2)
        wait_value(conn, "SELECT count(*) FROM error_log", 1)
        assert [row[0] for row in conn.execute("SELECT value FROM data_table ORDER BY 1")] == [
            "good 1",
            "good 2",
        ]
        failure = conn.execute("SELECT error_message, payload FROM error_log").fetchone()
        assert failure is not None
        assert "UTF8" in str(failure[0]) and failure[1] == b"\xff\x00"

        # "Monitoring", "Check NATS Connection" and "Troubleshooting", as written.
        monitoring = _psql(stack, guide_db, guide_sql("Monitor Message Processing"))
        assert re.search(r"^\s*5\s*$", monitoring, re.MULTILINE), monitoring  # message_log rows
        server = _psql(stack, guide_db, guide_sql("Check NATS Connection"))
        assert re.search(r"\d+\.\d+\.\d+\s*\|\s*1048576", server), server
        troubleshooting = _psql(stack, guide_db, guide_sql("Background Worker Not Starting"))
        assert "nats_server" in troubleshooting
        not_processed = _psql(stack, guide_db, guide_sql("Messages Not Being Processed"))
        assert "handle_demo_message" in not_processed
        wait_value(conn, "SELECT count(*) FROM message_log WHERE message = 'test'", 1)
        assert _psql(stack, guide_db, guide_sql("Check Background Worker Status")).strip() == ""
        assert _psql(stack, guide_db, guide_sql("Check for Errors")).strip() == ""
        # What the guide greps the server log for is in the worker's log instead.
        log = worker.log_text()
        assert "PGNATS" in log and guide_db in log and "demo.messages" in log

        # "Managing Subscriptions": list, then unsubscribe, as written.
        listing = _psql(stack, guide_db, guide_sql("List All Active Subscriptions"))
        assert "handle_demo_message" in listing and "process_order" in listing
        _psql(stack, guide_db, guide_sql("Unsubscribe from a Subject"))
        wait_not_subscribed(conn, "demo.messages")
        before = scalar(conn, "SELECT count(*) FROM message_log")
        _publish_text(conn, "demo.messages", "after unsubscribe")
        _publish_text(conn, "audit.marker", '{"marker": true}')
        wait_value(conn, "SELECT count(*) FROM audit_log", 2)  # later messages were processed
        assert scalar(conn, "SELECT count(*) FROM message_log") == before

        # "Reload Configuration": both, as written; the worker reconnects and goes on.
        forced = "reconnecting to NATS (pgnats_reload_conf_force())"
        forced_before = worker.log_text().count(forced)
        _psql(stack, guide_db, guide_sql("Reload Configuration"))
        _wait_for(lambda: worker.log_text().count(forced) > forced_before, "the forced reload")
        wait_subscribed(conn, "audit.*", timeout=20)
        _publish_text(conn, "audit.after_reload", '{"marker": "after reload"}')
        wait_value(conn, "SELECT count(*) FROM audit_log", 3, timeout=20)


def test_guide_templates_work_as_written(stack: Stack, guide_db: str) -> None:
    """The two template blocks: the signature with a body filled in, and each conversion
    expression applied to a payload."""
    signature = guide_sql("Function Signature").replace("...", "BEGIN\n    NULL;\nEND;")
    _psql(stack, guide_db, signature)
    _psql(stack, guide_db, "SELECT nats_subscribe('template.x', 'your_callback'::regproc);")
    payloads = {"To text": "'42'", "To JSON": "'42'", "To JSONB": "'42'", "To integer": "'42'"}
    expressions: list[str] = []
    comment = ""
    for line in guide_sql("Converting Payload").splitlines():
        if line.startswith("-- "):
            comment = line[3:].split(" (")[0]
        elif line.strip():
            expressions.append(line.strip())
            assert comment in payloads, comment
    assert len(expressions) == 4
    for expression in expressions:
        output = _psql(
            stack,
            guide_db,
            f"SELECT {expression} FROM (SELECT convert_to('42', 'UTF8') AS payload) AS p;",
        )
        assert "42" in output


def test_guide_two_databases(
    stack: Stack, make_database: MakeDatabase, worker: WorkerProcess
) -> None:
    """ "Advanced: Multiple Callbacks per Subject": each database its own callback, both
    receive the same messages."""
    block = guide_sql("Advanced: Multiple Callbacks per Subject")
    first_part, second_part = block.split("-- Database 2: Process messages")
    first, second = make_database(), make_database()
    with admin_connect(stack, first) as conn1, admin_connect(stack, second) as conn2:
        conn1.execute("CREATE TABLE log_table (line text)")
        _psql(stack, first, first_part)
        conn2.execute("CREATE TABLE processed (data jsonb)")
        conn2.execute(
            "CREATE FUNCTION complex_processing(data jsonb) RETURNS void LANGUAGE sql AS "
            "$$ INSERT INTO processed VALUES (data) $$"
        )
        _psql(stack, second, second_part)
        conn1.execute("SELECT nats_subscribe('shared.events', 'log_message'::regproc::oid)")
        conn2.execute("SELECT nats_subscribe('shared.events', 'process_message'::regproc::oid)")
        wait_subscribed(conn1, "shared.events")
        wait_subscribed(conn2, "shared.events")
        conn1.execute("""SELECT nats_publish_text('shared.events', '{"n": 1}')""")
        conn2.execute("""SELECT nats_publish_text('shared.events', '{"n": 2}')""")
        wait_value(conn1, "SELECT count(*) FROM log_table", 2)
        wait_value(conn2, "SELECT count(*) FROM processed", 2)
        assert sorted(str(row[0]) for row in conn1.execute("SELECT line FROM log_table")) == [
            '{"n": 1}',
            '{"n": 2}',
        ]
        numbers = conn2.execute("SELECT (data->>'n')::int FROM processed ORDER BY 1").fetchall()
        assert numbers == [(1,), (2,)]


def test_guide_user_registration(
    stack: Stack, guide_db: str, worker: WorkerProcess, nats_side: NatsSide
) -> None:
    """ "Complete Example: User Registration System", as written, with the email.send
    message its callback publishes received by a NATS subscriber."""
    block = guide_sql("Complete Example: User Registration System")
    steps, verify = block.split("-- 5. Verify")
    with admin_connect(stack, guide_db) as conn:
        _setup_as_written(stack, guide_db, conn)
        emails = nats_side.subscribe(stack.nats.url, "email.send")
        subscribe, publish = steps.split("-- 4. Test it")
        _psql(stack, guide_db, subscribe)
        wait_subscribed(conn, "user.register")
        _psql(stack, guide_db, publish)
        wait_value(conn, "SELECT count(*) FROM registration_events", 1)
        output = _psql(stack, guide_db, verify)
        assert "john@example.com" in output and "John Doe" in output
        user_id = scalar(conn, "SELECT id FROM users WHERE email = 'john@example.com'")
        event = scalar(conn, "SELECT event_data FROM registration_events")
        assert event == {"email": "john@example.com", "name": "John Doe"}
        message = emails.next(timeout=10)
        assert json.loads(message.data) == {
            "to": "john@example.com",
            "template": "welcome",
            "user_id": user_id,
        }
        worker.wait_for_log("User john@example.com registered with ID")
