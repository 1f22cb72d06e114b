"""Callbacks run with the privileges of the role that subscribed them, never the worker's
(superuser) role, whatever the callback tries."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from devstack.stack import Stack
from devstack.worker import WorkerProcess
from tests.conftest import admin_connect
from tests.worker.conftest import Conn, publish, scalar, wait_subscribed, wait_value

_role_numbers = itertools.count(1)


@pytest.fixture
def role(conn: Conn) -> Iterator[str]:
    """An ordinary role (no superuser, no special grants) that may create in public.
    Request it before ``worker`` so that the worker has stopped when the role is dropped."""
    name = f"pgnats_role_{os.getpid()}_{next(_role_numbers)}"
    conn.execute(f"CREATE ROLE {name}")
    conn.execute(f"GRANT CREATE ON SCHEMA public TO {name}")
    conn.execute(
        "CREATE FUNCTION am_superuser() RETURNS boolean LANGUAGE sql STABLE "
        "AS 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user'"
    )
    conn.execute(
        "CREATE TABLE audit (id serial PRIMARY KEY, note text, run_as text DEFAULT current_user, "
        "superuser boolean DEFAULT am_superuser())"
    )
    conn.execute(f"GRANT INSERT, SELECT ON audit TO {name}")
    conn.execute(f"GRANT USAGE ON SEQUENCE audit_id_seq TO {name}")
    conn.execute("CREATE TABLE secrets (secret text)")
    conn.execute("INSERT INTO secrets VALUES ('the worker may read this, the role may not')")
    yield name
    conn.execute("RESET ROLE")
    conn.execute(f"DROP OWNED BY {name}")
    conn.execute(f"DROP ROLE {name}")


def subscribe_as(conn: Conn, role: str, subject: str, body: str) -> None:
    """Create, as ``role``, a plpgsql callback with ``body`` (payload text in ``msg``) and
    subscribe it to ``subject``."""
    function = "cb_" + subject.replace(".", "_")
    conn.execute(f"SET ROLE {role}")
    conn.execute(
        f"""
        CREATE FUNCTION {function}(payload bytea) RETURNS void LANGUAGE plpgsql AS $$
        DECLARE
            msg text := convert_from(payload, 'UTF8');
        BEGIN
            {body}
        END
        $$
        """
    )
    conn.execute(f"SELECT nats_subscribe('{subject}', '{function}'::regproc)")
    conn.execute("RESET ROLE")
    wait_subscribed(conn, subject)


def audit(conn: Conn) -> list[tuple[str, str, bool]]:
    return [
        (str(note), str(run_as), bool(superuser))
        for note, run_as, superuser in conn.execute(
            "SELECT note, run_as, superuser FROM audit ORDER BY id"
        )
    ]


def failures(conn: Conn) -> list[tuple[bytes, str, str]]:
    return [
        (bytes(payload), str(sqlstate), str(error))
        for payload, sqlstate, error in conn.execute(
            "SELECT payload, sqlstate, error FROM pgnats.subscription_failures ORDER BY id"
        )
    ]


def test_callback_runs_as_the_subscribing_role(
    conn: Conn, role: str, nats_url: str, worker: WorkerProcess
) -> None:
    subscribe_as(conn, role, "as.role", "INSERT INTO audit (note) VALUES (msg);")
    publish(nats_url, "as.role", ["hello"])
    wait_value(conn, "SELECT count(*) FROM audit", 1)
    assert audit(conn) == [("hello", role, False)]
    assert scalar(conn, "SELECT role::text FROM pgnats.subscription_status") == role


def test_callback_cannot_read_what_the_role_may_not(
    conn: Conn, role: str, nats_url: str, worker: WorkerProcess
) -> None:
    subscribe_as(
        conn,
        role,
        "peek",
        "INSERT INTO audit (note) VALUES (msg); "
        "IF msg = 'steal' THEN INSERT INTO audit (note) SELECT secret FROM secrets; END IF;",
    )
    publish(nats_url, "peek", ["before", "steal", "after"])
    wait_value(conn, "SELECT count(*) FROM pgnats.subscription_failures", 1)
    wait_value(conn, "SELECT count(*) FROM audit", 2)
    assert audit(conn) == [("before", role, False), ("after", role, False)]
    assert failures(conn) == [(b"steal", "42501", "permission denied for table secrets")]


@pytest.mark.parametrize(
    "escape",
    [
        "RESET ROLE",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "RESET SESSION AUTHORIZATION",
        "PERFORM set_config('role', 'postgres', false)",
    ],
)
def test_callback_cannot_get_back_to_the_workers_role(
    conn: Conn, role: str, nats_url: str, worker: WorkerProcess, escape: str
) -> None:
    subscribe_as(
        conn,
        role,
        "escape",
        f"""
        BEGIN
            {escape};
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO audit (note) VALUES ('refused: ' || SQLERRM);
        END;
        INSERT INTO audit (note) VALUES (msg);
        """,
    )
    publish(nats_url, "escape", ["try"])
    wait_value(conn, "SELECT count(*) FROM audit", 2)
    notes = audit(conn)
    assert all(run_as == role and not superuser for _, run_as, superuser in notes)
    assert notes[0][0].startswith("refused: ")
    assert notes[1][0] == "try"


def test_uncaught_reset_role_is_a_recorded_failure(
    conn: Conn, role: str, nats_url: str, worker: WorkerProcess
) -> None:
    subscribe_as(conn, role, "reset", "RESET ROLE; INSERT INTO audit (note) VALUES (msg);")
    publish(nats_url, "reset", ["x"])
    wait_value(conn, "SELECT count(*) FROM pgnats.subscription_failures", 1)
    assert audit(conn) == []
    ((payload, sqlstate, error),) = failures(conn)
    assert (payload, sqlstate) == (b"x", "42501")
    assert "security-definer" in error


@pytest.mark.parametrize(
    "tamper",
    [
        "ALTER FUNCTION pg_temp.pgnats_call(oid, oid, bytea[], boolean) SECURITY INVOKER",
        "DROP FUNCTION pg_temp.pgnats_call(oid, oid, bytea[], boolean)",
        # The role owns the dispatch function and may create in pg_temp: it can replace it.
        """CREATE OR REPLACE FUNCTION pg_temp.pgnats_call(expected_role oid, callback oid,
               payloads bytea[], isolate boolean)
           RETURNS TABLE (idx integer, err_sqlstate text, err_message text, err_detail text,
                          err_hint text, err_context text)
           LANGUAGE plpgsql AS $evil$
           BEGIN
               RESET ROLE;
               INSERT INTO audit (note) VALUES ('evil');
           END $evil$""",
    ],
    ids=["security-invoker", "drop", "replace"],
)
def test_tampering_with_the_dispatch_function_gains_nothing(
    conn: Conn, role: str, nats_url: str, worker: WorkerProcess, tamper: str
) -> None:
    statement = tamper.format(role=role).replace("'", "''")
    subscribe_as(
        conn,
        role,
        "tamper",
        "INSERT INTO audit (note) VALUES (msg); "
        f"IF msg = 'tamper' THEN EXECUTE '{statement}'; END IF;",
    )
    publish(nats_url, "tamper", ["tamper"])
    wait_value(conn, "SELECT count(*) FROM audit", 1)
    # The next batch finds the function changed: refused and recorded, never run.
    publish(nats_url, "tamper", ["refused"])
    wait_value(conn, "SELECT count(*) FROM pgnats.subscription_failures", 1)
    assert failures(conn)[0][:2] == (b"refused", "PN101")
    # The worker makes a new one; later messages run as the role again.
    publish(nats_url, "tamper", ["later"])
    wait_value(conn, "SELECT count(*) FROM audit", 2)
    assert audit(conn) == [("tamper", role, False), ("later", role, False)]


def test_session_settings_changed_by_a_callback_do_not_stick(
    conn: Conn, role: str, nats_url: str, worker: WorkerProcess
) -> None:
    subscribe_as(
        conn,
        role,
        "settings",
        """
        INSERT INTO audit (note) VALUES (msg || ' ' || current_setting('search_path'));
        SET search_path = pg_catalog;
        SET statement_timeout = 1;
        SET default_transaction_read_only = on;
        """,
    )
    publish(nats_url, "settings", ["one"])
    wait_value(conn, "SELECT count(*) FROM audit", 1)
    publish(nats_url, "settings", ["two"])
    wait_value(conn, "SELECT count(*) FROM audit", 2)
    assert [note for note, _, _ in audit(conn)] == ['one "$user", public', 'two "$user", public']
    assert failures(conn) == []
    wait_value(conn, "SELECT processed FROM pgnats.subscription_status", 2)


def test_roles_do_not_share_a_session(
    conn: Conn, role: str, nats_url: str, worker: WorkerProcess
) -> None:
    """A temporary table made by one role's callback cannot capture another role's rows."""
    conn.execute("CREATE TABLE shared_log (note text, run_as text DEFAULT current_user)")
    conn.execute(f"GRANT INSERT ON shared_log TO {role}")
    subscribe_as(
        conn,
        role,
        "trap",
        "CREATE TEMP TABLE IF NOT EXISTS shared_log (note text, run_as text); "
        "GRANT ALL ON pg_temp.shared_log TO PUBLIC; "
        "INSERT INTO audit (note) VALUES (msg);",
    )
    conn.execute(
        "CREATE FUNCTION admin_cb(p bytea) RETURNS void LANGUAGE sql "
        "AS $$INSERT INTO shared_log (note) VALUES (convert_from(p, 'UTF8'))$$"
    )
    conn.execute("SELECT nats_subscribe('trap', 'admin_cb'::regproc)")
    wait_subscribed(conn, "trap")
    publish(nats_url, "trap", ["one", "two"])
    wait_value(conn, "SELECT count(*) FROM audit", 2)
    wait_value(conn, "SELECT count(*) FROM shared_log", 2)
    assert conn.execute("SELECT note, run_as FROM shared_log ORDER BY note").fetchall() == [
        ("one", "postgres"),
        ("two", "postgres"),
    ]


def test_messages_held_for_a_role_dropped_meanwhile_are_recorded(
    stack: Stack, db: str, conn: Conn, role: str, nats_url: str, worker: WorkerProcess
) -> None:
    conn.execute("CREATE TABLE gate (x int)")
    conn.execute(f"GRANT SELECT ON gate TO {role}")
    conn.execute(
        "CREATE FUNCTION gated(p bytea) RETURNS void LANGUAGE plpgsql "
        "AS 'BEGIN PERFORM count(*) FROM gate; END'"
    )
    conn.execute(f"SET ROLE {role}")
    conn.execute("SELECT nats_subscribe('orphan', 'gated'::regproc)")
    conn.execute("RESET ROLE")
    wait_subscribed(conn, "orphan")
    with admin_connect(stack, db) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")
        publish(nats_url, "orphan", ["held"])  # its batch waits for the lock
        wait_value(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND application_name LIKE 'pgnats-worker dispatch%%'",
            1,
        )
        publish(nats_url, "orphan", ["queued"])
        # The role goes (DROP OWNED takes its dispatch function in the worker's session).
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
        conn.execute(f"CREATE ROLE {role}")  # for the fixture's teardown
        holder.execute("COMMIT")
    # The message running when its role went, and the one waiting behind it: recorded.
    wait_value(conn, "SELECT count(*) FROM pgnats.subscription_failures", 2)
    (held, _, _), (queued, sqlstate, error) = failures(conn)
    assert (held, queued) == (b"held", b"queued")
    assert sqlstate == "42704"
    assert "the subscribing role (OID " in error
    assert "no longer exists" in error
    worker.wait_for_log("subscription not served: orphan -> gated(bytea) (role ")
    wait_value(conn, "SELECT subscribed FROM pgnats.subscription_status", False)
