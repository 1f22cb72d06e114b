"""The SQL side of subscriptions, without a worker: nats_subscribe / nats_unsubscribe checks,
row-level security, removal with dropped functions, notification at commit, pg_dump/restore."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from devstack.stack import Stack
from tests.conftest import MakeDatabase, admin_connect
from tests.worker.conftest import Conn, scalar

PG_BIN = "/usr/lib/postgresql/15/bin"
SUBSCRIPTION_ROWS = (
    "SELECT subject, callback::text, role::text, callback::oid FROM pgnats.subscriptions ORDER BY 1"
)


@pytest.fixture
def cb(conn: Conn) -> str:
    conn.execute("CREATE FUNCTION cb(payload bytea) RETURNS void LANGUAGE sql AS 'SELECT'")
    return "cb"


def rows(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT subject, callback::text, role::text FROM pgnats.subscriptions ORDER BY 1, 2"
    ).fetchall()


def test_subscribe_with_regproc_oid_and_regproc(conn: Conn, cb: str) -> None:
    conn.execute("SELECT nats_subscribe('demo.messages', 'cb'::regproc::oid)")
    conn.execute("SELECT nats_subscribe('demo.other', 'cb'::regproc)")
    assert rows(conn) == [
        ("demo.messages", "cb(bytea)", "postgres"),
        ("demo.other", "cb(bytea)", "postgres"),
    ]
    # The guide's listing query.
    listing = conn.execute(
        "SELECT subject, callback::regproc AS function_name FROM pgnats.subscriptions ORDER BY 1"
    ).fetchall()
    assert [(s, str(f)) for s, f in listing] == [("demo.messages", "cb"), ("demo.other", "cb")]


def test_subscribing_twice_is_harmless(conn: Conn, cb: str) -> None:
    conn.execute("SELECT nats_subscribe('a.b', 'cb'::regproc)")
    conn.execute("SELECT nats_subscribe('a.b', 'cb'::regproc)")
    assert rows(conn) == [("a.b", "cb(bytea)", "postgres")]


def test_wildcard_subjects_are_accepted(conn: Conn, cb: str) -> None:
    for subject in ("events.*.created", "logs.>", "*", ">"):
        conn.execute("SELECT nats_subscribe(%s, 'cb'::regproc)", (subject,))
    assert len(rows(conn)) == 4


@pytest.mark.parametrize(
    ("subject", "error"),
    [
        (None, psycopg.errors.NullValueNotAllowed),
        ("", psycopg.errors.InvalidParameterValue),
        ("a..b", psycopg.errors.InvalidParameterValue),
        ("a b", psycopg.errors.InvalidParameterValue),
        ("a.>.b", psycopg.errors.InvalidParameterValue),
        ("a*", psycopg.errors.InvalidParameterValue),
    ],
)
def test_bad_subjects_are_refused(
    conn: Conn, cb: str, subject: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"pgnats: .*subject"):
        conn.execute("SELECT nats_subscribe(%s, 'cb'::regproc)", (subject,))
    assert rows(conn) == []


def test_null_callback_is_refused(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="callback must not be NULL"):
        conn.execute("SELECT nats_subscribe('a', NULL)")


def test_missing_function_is_refused(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.UndefinedFunction, match="OID 4242424 does not exist"):
        conn.execute("SELECT nats_subscribe('a', 4242424)")


@pytest.mark.parametrize(
    ("definition", "signature", "message"),
    [
        ("FUNCTION f(t text) RETURNS void LANGUAGE sql AS 'SELECT'", "f(text)", "exactly one"),
        (
            "FUNCTION f(a bytea, b bytea) RETURNS void LANGUAGE sql AS 'SELECT'",
            "f(bytea,bytea)",
            "exactly one",
        ),
        ("FUNCTION f() RETURNS void LANGUAGE sql AS 'SELECT'", "f()", "exactly one"),
        ("PROCEDURE f(p bytea) LANGUAGE sql AS 'SELECT'", "f(bytea)", "is a procedure"),
        (
            "AGGREGATE f(bytea) (SFUNC = byteacat, STYPE = bytea)",
            "f(bytea)",
            "is an aggregate",
        ),
    ],
)
def test_functions_of_the_wrong_shape_are_refused(
    conn: Conn, definition: str, signature: str, message: str
) -> None:
    conn.execute(f"CREATE {definition}")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message) as info:
        conn.execute("SELECT nats_subscribe('a', %s::regprocedure)", (signature,))
    assert "bytea" in str(info.value)
    assert info.value.diag.message_hint is not None
    assert "payload bytea" in info.value.diag.message_hint


@pytest.fixture
def alice(conn: Conn) -> Iterator[str]:
    """An ordinary role with USAGE on nothing special."""
    conn.execute("CREATE ROLE alice_worker_test LOGIN")
    yield "alice_worker_test"
    conn.execute("RESET ROLE")
    conn.execute("DROP OWNED BY alice_worker_test")
    conn.execute("DROP ROLE alice_worker_test")


def test_role_cannot_subscribe_a_function_it_may_not_execute(conn: Conn, alice: str) -> None:
    conn.execute("CREATE FUNCTION secret_cb(p bytea) RETURNS void LANGUAGE sql AS 'SELECT'")
    conn.execute("REVOKE EXECUTE ON FUNCTION secret_cb(bytea) FROM PUBLIC")
    conn.execute(f"SET ROLE {alice}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not execute"):
        conn.execute("SELECT nats_subscribe('a', 'secret_cb'::regproc)")
    # Writing the row directly gets the same check.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not execute"):
        conn.execute(
            "INSERT INTO pgnats.subscriptions (subject, callback) "
            "VALUES ('a', 'secret_cb'::regproc)"
        )
    conn.execute("RESET ROLE")
    assert rows(conn) == []


def test_role_subscribes_and_unsubscribes_only_its_own_rows(
    conn: Conn, cb: str, alice: str
) -> None:
    conn.execute("SELECT nats_subscribe('admin.x', 'cb'::regproc)")
    conn.execute(f"SET ROLE {alice}")
    conn.execute("SELECT nats_subscribe('alice.x', 'cb'::regproc)")
    assert rows(conn) == [("admin.x", "cb(bytea)", "postgres"), ("alice.x", "cb(bytea)", alice)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to role postgres"):
        conn.execute("SELECT nats_unsubscribe('admin.x', 'cb'::regproc)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        conn.execute(
            "INSERT INTO pgnats.subscriptions (subject, callback, role) "
            "VALUES ('b', 'cb'::regproc, 'postgres')"
        )
    assert conn.execute("DELETE FROM pgnats.subscriptions WHERE subject = 'admin.x'").rowcount == 0
    conn.execute("SELECT nats_unsubscribe('alice.x', 'cb'::regproc)")
    conn.execute("RESET ROLE")
    assert rows(conn) == [("admin.x", "cb(bytea)", "postgres")]


def test_unsubscribe(conn: Conn, cb: str) -> None:
    conn.execute("SELECT nats_subscribe('a', 'cb'::regproc)")
    conn.execute("SELECT nats_unsubscribe('a', 'cb'::regproc::oid)")
    assert rows(conn) == []
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
    conn.execute("SELECT nats_unsubscribe('a', 'cb'::regproc)")  # again: a notice, no error
    assert notices == ["pgnats: cb(bytea) is not subscribed to 'a'; nothing to do"]
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        conn.execute("SELECT nats_unsubscribe(NULL, 'cb'::regproc)")
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        conn.execute("SELECT nats_unsubscribe('a', NULL)")


def test_dropping_a_function_removes_its_subscriptions(conn: Conn, cb: str) -> None:
    conn.execute('CREATE SCHEMA "Mixed Schema"')
    conn.execute(
        'CREATE FUNCTION "Mixed Schema"."Handle It"(p bytea) RETURNS void '
        "LANGUAGE sql AS $$SELECT$$"
    )
    conn.execute('CREATE FUNCTION "CamelCase"(p bytea) RETURNS void LANGUAGE sql AS $$SELECT$$')
    conn.execute("CREATE FUNCTION other(p bytea) RETURNS void LANGUAGE sql AS 'SELECT'")
    conn.execute("""SELECT nats_subscribe('a', '"Mixed Schema"."Handle It"'::regproc)""")
    conn.execute("""SELECT nats_subscribe('a', '"CamelCase"'::regproc)""")
    conn.execute("SELECT nats_subscribe('a', 'cb'::regproc)")
    conn.execute("SELECT nats_subscribe('b', 'other'::regproc)")
    assert len(rows(conn)) == 4
    conn.execute('DROP SCHEMA "Mixed Schema" CASCADE')
    conn.execute('DROP FUNCTION "CamelCase"')
    assert rows(conn) == [("a", "cb(bytea)", "postgres"), ("b", "other(bytea)", "postgres")]
    conn.execute("DROP FUNCTION cb")
    assert rows(conn) == [("b", "other(bytea)", "postgres")]


def test_drop_owned_removes_the_roles_callbacks(conn: Conn, alice: str) -> None:
    conn.execute(f"GRANT CREATE ON SCHEMA public TO {alice}")
    conn.execute(f"SET ROLE {alice}")
    conn.execute("CREATE FUNCTION alice_cb(p bytea) RETURNS void LANGUAGE sql AS 'SELECT'")
    conn.execute("SELECT nats_subscribe('a', 'alice_cb'::regproc)")
    conn.execute("RESET ROLE")
    assert len(rows(conn)) == 1
    conn.execute(f"DROP OWNED BY {alice}")
    assert rows(conn) == []


def test_a_dropped_function_inside_a_rolled_back_transaction_keeps_its_row(
    conn: Conn, cb: str
) -> None:
    conn.execute("SELECT nats_subscribe('a', 'cb'::regproc)")
    with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
        conn.execute("DROP FUNCTION cb")
        conn.execute("SELECT 1/0")
    assert rows(conn) == [("a", "cb(bytea)", "postgres")]


def test_worker_is_notified_when_the_transaction_commits(
    stack: Stack, db: str, conn: Conn, cb: str
) -> None:
    with admin_connect(stack, db) as listener:
        listener.execute("LISTEN pgnats")
        with conn.transaction():
            conn.execute("SELECT nats_subscribe('a', 'cb'::regproc)")
            assert list(listener.notifies(timeout=0.3)) == []
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        assert got == ["subscriptions"]
        conn.execute("SELECT nats_unsubscribe('a', 'cb'::regproc)")
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        assert got == ["subscriptions"]


def test_internal_functions_are_not_for_public(conn: Conn, alice: str) -> None:
    conn.execute(f"SET ROLE {alice}")
    for call in (
        "SELECT pgnats._prepare_dispatch(1)",
        "SELECT * FROM pgnats._dispatch(1, 'a', 1, '{}', false)",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(call)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("INSERT INTO pgnats.subscription_stats (subject, callback) VALUES ('a', 1)")


def test_subscriptions_and_failures_survive_dump_and_restore(
    stack: Stack, make_database: MakeDatabase, tmp_path: Any
) -> None:
    source = make_database()
    with admin_connect(stack, source) as conn:
        conn.execute("CREATE ROLE dump_test_role")
        try:
            conn.execute('CREATE SCHEMA "App"')
            conn.execute(
                'CREATE FUNCTION "App"."On Order"(p bytea) RETURNS void LANGUAGE sql AS $$SELECT$$'
            )
            conn.execute("CREATE FUNCTION padding(p bytea) RETURNS void LANGUAGE sql AS 'SELECT'")
            conn.execute("CREATE FUNCTION role_cb(p bytea) RETURNS void LANGUAGE sql AS 'SELECT'")
            conn.execute("""SELECT nats_subscribe('orders.*', '"App"."On Order"'::regproc)""")
            conn.execute("SET ROLE dump_test_role")
            conn.execute("SELECT nats_subscribe('roles.>', 'role_cb'::regproc)")
            conn.execute("RESET ROLE")
            conn.execute(
                "INSERT INTO pgnats.subscription_failures "
                "(subject, subscription, callback, role, payload, error) "
                "VALUES ('orders.1', 'orders.*', 'x(bytea)', 'postgres', '\\x00ff', 'boom')"
            )
            before = conn.execute(SUBSCRIPTION_ROWS).fetchall()
            dump = tmp_path / "source.dump"
            subprocess.run(
                [f"{PG_BIN}/pg_dump", "-Fc", "-f", str(dump), stack.postgres.url(source)],
                check=True,
                capture_output=True,
            )
            target = make_database(extension=False)
            # The target's OIDs differ: make some new objects first.
            with admin_connect(stack, target) as other:
                other.execute("CREATE TABLE shift_oids AS SELECT 1 AS x")
            result = subprocess.run(
                [f"{PG_BIN}/pg_restore", "-d", stack.postgres.url(target), str(dump)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            with admin_connect(stack, target) as restored:
                after = restored.execute(SUBSCRIPTION_ROWS).fetchall()
                assert [r[:3] for r in after] == [r[:3] for r in before]
                assert [r[:3] for r in after] == [
                    ("orders.*", '"App"."On Order"(bytea)', "postgres"),
                    ("roles.>", "role_cb(bytea)", "dump_test_role"),
                ]
                assert [r[3] for r in after] != [r[3] for r in before]
                failure = restored.execute(
                    "SELECT subject, payload, error FROM pgnats.subscription_failures"
                ).fetchall()
                assert failure == [("orders.1", b"\x00\xff", "boom")]
                assert (
                    scalar(restored, "SELECT nextval('pgnats.subscription_failures_id_seq')") == 2
                )
                # A plain SQL dump restores through psql too.
                sql = subprocess.run(
                    [f"{PG_BIN}/pg_dump", stack.postgres.url(target)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                assert "COPY pgnats.subscriptions" in sql
        finally:
            with admin_connect(stack, source) as cleanup:
                cleanup.execute("DROP OWNED BY dump_test_role")
            conn.execute("DROP ROLE IF EXISTS dump_test_role")


def test_drop_extension(conn: Conn, cb: str) -> None:
    conn.execute("SELECT nats_subscribe('a', 'cb'::regproc)")
    conn.execute("DROP SERVER nats_server")
    conn.execute("DROP EXTENSION pgnats")
    assert scalar(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgnats'") == 0
    conn.execute("CREATE EXTENSION pgnats")
    assert rows(conn) == []
