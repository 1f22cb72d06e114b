"""The background-workers guide (shared/seed/background-workers-guide.md): its subscription
statements, as written, with messages published from the test (nats-py) instead of the
guide's nats_publish_* calls, which belong to the core publish functions."""

from __future__ import annotations

import json

import psycopg
import pytest

from devstack.worker import WorkerProcess
from tests.worker.conftest import Conn, publish, scalar, wait_subscribed, wait_value

TABLES = """
CREATE TABLE orders (order_id integer PRIMARY KEY, customer text, amount numeric);
CREATE TABLE audit_log (event_data jsonb, received_at timestamptz);
CREATE TABLE metrics (metric_name text, value numeric, timestamp timestamp);
CREATE TABLE aggregates (metric_name text PRIMARY KEY, samples integer);
CREATE FUNCTION update_metric_aggregates(name text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO aggregates VALUES (name, 1)
    ON CONFLICT (metric_name) DO UPDATE SET samples = aggregates.samples + 1
$$;
"""

# The guide's examples 1 to 3, verbatim.
EXAMPLES = """
CREATE FUNCTION process_order(payload BYTEA)
RETURNS void AS $$
DECLARE
    order_data JSONB;
BEGIN
    order_data := convert_from(payload, 'UTF8')::jsonb;

    -- Insert into orders table
    INSERT INTO orders (order_id, customer, amount)
    VALUES (
        (order_data->>'order_id')::INTEGER,
        order_data->>'customer',
        (order_data->>'amount')::DECIMAL
    );

    RAISE NOTICE 'Order % processed', order_data->>'order_id';
END;
$$ LANGUAGE plpgsql;

SELECT nats_subscribe('orders.new', 'process_order'::regproc::oid);

CREATE FUNCTION log_audit_event(payload BYTEA)
RETURNS void AS $$
BEGIN
    INSERT INTO audit_log (event_data, received_at)
    VALUES (convert_from(payload, 'UTF8')::jsonb, NOW());
END;
$$ LANGUAGE plpgsql;

SELECT nats_subscribe('audit.*', 'log_audit_event'::regproc::oid);

CREATE FUNCTION process_metric(payload BYTEA)
RETURNS void AS $$
DECLARE
    metric JSONB;
BEGIN
    metric := convert_from(payload, 'UTF8')::jsonb;

    INSERT INTO metrics (metric_name, value, timestamp)
    VALUES (
        metric->>'name',
        (metric->>'value')::NUMERIC,
        (metric->>'timestamp')::TIMESTAMP
    );

    -- Trigger aggregation if needed
    PERFORM update_metric_aggregates(metric->>'name');
END;
$$ LANGUAGE plpgsql;

SELECT nats_subscribe('metrics.incoming', 'process_metric'::regproc::oid);
"""


def test_guide_examples(conn: Conn, nats_url: str, worker: WorkerProcess) -> None:
    conn.execute(TABLES)
    conn.execute(EXAMPLES)  # several statements: the simple query protocol runs them all
    listed = conn.execute(
        "SELECT subject, callback::regproc AS function_name FROM pgnats.subscriptions ORDER BY 1"
    ).fetchall()
    assert [(subject, str(name)) for subject, name in listed] == [
        ("audit.*", "log_audit_event"),
        ("metrics.incoming", "process_metric"),
        ("orders.new", "process_order"),
    ]
    for subject in ("orders.new", "audit.*", "metrics.incoming"):
        wait_subscribed(conn, subject)
    publish(
        nats_url,
        "orders.new",
        [json.dumps({"order_id": 123, "customer": "John Doe", "amount": 99.99})],
    )
    publish(nats_url, "audit.login", ['{"user": "john"}'])
    publish(nats_url, "audit.logout", ['{"user": "john"}'])
    publish(nats_url, "audit.x.y", ['{"not": "matched by audit.*"}'])
    publish(
        nats_url,
        "metrics.incoming",
        ['{"name": "cpu", "value": 0.5, "timestamp": "2024-01-01 10:00:00"}'],
    )
    wait_value(conn, "SELECT count(*) FROM orders", 1)
    wait_value(conn, "SELECT count(*) FROM audit_log", 2)
    wait_value(conn, "SELECT count(*) FROM aggregates WHERE metric_name = 'cpu' AND samples = 1", 1)
    assert conn.execute("SELECT order_id, customer, amount::text FROM orders").fetchone() == (
        123,
        "John Doe",
        "99.99",
    )
    worker.wait_for_log("NOTICE: Order 123 processed")
    # Troubleshooting queries from the guide.
    assert scalar(conn, "SELECT count(*) FROM pg_foreign_server WHERE srvname = 'nats_server'") == 1
    assert scalar(conn, "SELECT proname FROM pg_proc WHERE proname = 'process_order'") == (
        "process_order"
    )
    conn.execute("SELECT nats_unsubscribe('orders.new', 'process_order'::regproc::oid)")
    assert scalar(conn, "SELECT count(*) FROM pgnats.subscriptions") == 2


def test_guide_user_registration(conn: Conn, nats_url: str, worker: WorkerProcess) -> None:
    """The guide's complete example; its callback publishes with nats_publish_jsonb."""
    try:
        conn.execute("SELECT nats_publish_jsonb('pgnats.probe', '{}'::jsonb, NULL, NULL)")
    except psycopg.Error as exc:
        pytest.skip(
            f"nats_publish_jsonb is not available in this build: {exc.diag.message_primary}"
        )
    conn.execute(
        """
        CREATE TABLE users (
            id SERIAL PRIMARY KEY,
            email TEXT UNIQUE,
            name TEXT,
            created_at TIMESTAMP DEFAULT NOW()
        );
        CREATE TABLE registration_events (
            id SERIAL PRIMARY KEY,
            user_id INTEGER REFERENCES users(id),
            event_data JSONB,
            processed_at TIMESTAMP DEFAULT NOW()
        );
        CREATE FUNCTION handle_user_registration(payload BYTEA)
        RETURNS void AS $$
        DECLARE
            reg_data JSONB;
            new_user_id INTEGER;
        BEGIN
            reg_data := convert_from(payload, 'UTF8')::jsonb;
            INSERT INTO users (email, name)
            VALUES (reg_data->>'email', reg_data->>'name')
            RETURNING id INTO new_user_id;
            INSERT INTO registration_events (user_id, event_data)
            VALUES (new_user_id, reg_data);
            PERFORM nats_publish_jsonb(
                'email.send',
                jsonb_build_object(
                    'to', reg_data->>'email',
                    'template', 'welcome',
                    'user_id', new_user_id
                ),
                NULL,
                NULL
            );
            RAISE NOTICE 'User % registered with ID %', reg_data->>'email', new_user_id;
        END;
        $$ LANGUAGE plpgsql;
        """
    )
    conn.execute("SELECT nats_subscribe('user.register', 'handle_user_registration'::regproc::oid)")
    wait_subscribed(conn, "user.register")
    publish(nats_url, "user.register", ['{"email": "john@example.com", "name": "John Doe"}'])
    wait_value(conn, "SELECT count(*) FROM registration_events", 1)
    assert scalar(conn, "SELECT email FROM users") == "john@example.com"
