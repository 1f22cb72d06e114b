"""nats_request_*: replies, no responders, timeouts, and cancellation of a waiting request."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest
from nats.aio.msg import Msg

from devstack.stack import Stack
from tests.conftest import admin_connect
from tests.nats_helpers import NatsSide, echo
from tests.queries import Conn, client_id, scalar


async def never_answer(message: Msg) -> None:
    return None


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("nats_request_text('svc.echo', 'héllo')", "héllo".encode()),
        ("nats_request_binary('svc.echo', '\\x00ff'::bytea)", b"\x00\xff"),
        ("nats_request_json('svc.echo', '[1, 2]'::json)", b"[1, 2]"),
        ("nats_request_jsonb('svc.echo', '{\"a\": 1}'::jsonb, 2000)", b'{"a": 1}'),
    ],
)
def test_request_returns_the_reply(
    conn: Conn, nats_url: str, nats_side: NatsSide, call: str, expected: bytes
) -> None:
    nats_side.respond(nats_url, "svc.echo", echo)
    assert scalar(conn, f"SELECT {call}") == expected


def test_many_requests_each_get_their_own_reply(
    conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    nats_side.respond(nats_url, "svc.echo", echo)
    rows = conn.execute(
        "SELECT i, convert_from(nats_request_text('svc.echo', i::text), 'UTF8') "
        "FROM generate_series(1, 300) i"
    ).fetchall()
    assert all(str(i) == reply for i, reply in rows)


def test_no_responders_fails_at_once(conn: Conn) -> None:
    conn.execute("SELECT nats_publish_text('warm.up', 'connect first')")
    started = time.monotonic()
    with pytest.raises(psycopg.Error, match=r"no responders .*'nobody\.home'") as excinfo:
        conn.execute("SELECT nats_request_text('nobody.home', 'x', 5000)")
    assert time.monotonic() - started < 0.5
    assert excinfo.value.sqlstate == "PN002"


def test_request_times_out(conn: Conn, nats_url: str, nats_side: NatsSide) -> None:
    nats_side.respond(nats_url, "svc.silent", never_answer)
    conn.execute("SELECT nats_publish_text('warm.up', 'connect first')")
    started = time.monotonic()
    with pytest.raises(psycopg.Error, match=r"no reply .*'svc\.silent' within 300 ms") as excinfo:
        conn.execute("SELECT nats_request_text('svc.silent', 'x', 300)")
    elapsed = time.monotonic() - started
    assert excinfo.value.sqlstate == "PN001"
    assert 0.29 < elapsed < 0.6


def test_default_timeout_is_the_server_option(
    conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    nats_side.respond(nats_url, "svc.silent", never_answer)
    conn.execute("ALTER SERVER nats_server OPTIONS (ADD request_timeout '250')")
    conn.execute("SELECT pgnats_reload_conf()")
    started = time.monotonic()
    with pytest.raises(psycopg.Error, match="within 250 ms"):
        conn.execute("SELECT nats_request_text('svc.silent', 'x')")
    assert time.monotonic() - started < 0.6


def test_late_reply_is_not_taken_for_the_next_one(
    conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    async def answer_late(message: Msg) -> bytes:
        await asyncio.sleep(0.4)
        return b"late reply"

    nats_side.respond(nats_url, "svc.slow", answer_late)
    nats_side.respond(nats_url, "svc.echo", echo)
    before = client_id(conn)
    with pytest.raises(psycopg.Error, match="no reply"):
        conn.execute("SELECT nats_request_text('svc.slow', 'x', 100)")
    time.sleep(0.6)  # the late reply is now waiting in the connection
    assert scalar(conn, "SELECT nats_request_text('svc.echo', 'fresh')") == b"fresh"
    assert client_id(conn) == before


def test_reply_with_headers_returns_the_payload(
    conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    client = nats_side.connect(nats_url)

    async def answer(message: Msg) -> None:
        await client.publish(message.reply, b"with headers", headers={"X-Status": "ok"})

    async def subscribe() -> None:
        await client.subscribe("svc.headers", cb=answer)
        await client.flush()

    nats_side.run(subscribe())
    assert scalar(conn, "SELECT nats_request_text('svc.headers', 'x')") == b"with headers"


# -- cancellation --------------------------------------------------------------------------


def test_statement_timeout_ends_a_waiting_request(
    conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    nats_side.respond(nats_url, "svc.silent", never_answer)
    nats_side.respond(nats_url, "svc.echo", echo)
    before = client_id(conn)
    conn.execute("SET statement_timeout = '400ms'")
    started = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
        conn.execute("SELECT nats_request_text('svc.silent', 'x', 10000)")
    elapsed = time.monotonic() - started
    assert 0.39 < elapsed < 0.4 + 0.15
    conn.execute("RESET statement_timeout")
    # The session goes on with the same connection.
    assert scalar(conn, "SELECT nats_request_text('svc.echo', 'after')") == b"after"
    assert client_id(conn) == before


def test_cancel_ends_a_waiting_request(
    stack: Stack, db: str, conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    nats_side.respond(nats_url, "svc.silent", never_answer)
    nats_side.respond(nats_url, "svc.echo", echo)
    pid = scalar(conn, "SELECT pg_backend_pid()")
    before = client_id(conn)
    outcome: dict[str, object] = {}

    def waiting_request() -> None:
        try:
            conn.execute("SELECT nats_request_text('svc.silent', 'x', 10000)")
        except psycopg.Error as exc:
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=waiting_request)
    thread.start()
    time.sleep(0.3)
    with admin_connect(stack, db) as other:
        cancelled_at = time.monotonic()
        assert scalar(other, "SELECT pg_cancel_backend(%s)", pid) is True
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled)
    assert float(outcome["ended"]) - cancelled_at < 0.15  # type: ignore[arg-type]
    assert scalar(conn, "SELECT nats_request_text('svc.echo', 'after')") == b"after"
    assert client_id(conn) == before
