"""nats_publish_*: messages arrive as sent, with reply subjects and headers, and they leave
the backend before the call returns."""

from __future__ import annotations

import json
import socket
import time

import pytest

from devstack.stack import Stack
from tests.conftest import admin_connect
from tests.nats_helpers import NatsSide
from tests.queries import Conn


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("nats_publish_text('t.flavour', 'héllo wörld')", "héllo wörld".encode()),
        ("nats_publish_binary('t.flavour', '\\x00ff10'::bytea)", b"\x00\xff\x10"),
        ("nats_publish_json('t.flavour', '{\"a\": [1, 2]}'::json)", b'{"a": [1, 2]}'),
        ("nats_publish_jsonb('t.flavour', '{\"a\": [1,2]}'::jsonb)", b'{"a": [1, 2]}'),
        ("nats_publish_text('t.flavour', '')", b""),
    ],
)
def test_each_flavour_arrives_as_sent(
    conn: Conn, nats_url: str, nats_side: NatsSide, call: str, expected: bytes
) -> None:
    received = nats_side.subscribe(nats_url, "t.flavour")
    conn.execute(f"SELECT {call}")
    message = received.next()
    assert message.data == expected
    assert message.reply == ""
    assert not message.headers
    received.assert_empty()


def test_reply_subject_is_passed_on(conn: Conn, nats_url: str, nats_side: NatsSide) -> None:
    received = nats_side.subscribe(nats_url, "t.reply")
    conn.execute("SELECT nats_publish_text('t.reply', 'x', 'answers.here')")
    assert received.next().reply == "answers.here"


def test_many_publishes_in_one_statement_arrive_in_order(
    conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    received = nats_side.subscribe(nats_url, "t.many")
    conn.execute(
        "SELECT count(nats_publish_text('t.many', i::text)) FROM generate_series(1, 2000) i"
    )
    assert [m.data for m in received.take(2000)] == [str(i).encode() for i in range(1, 2001)]
    received.assert_empty()


def test_lone_publish_arrives_while_the_session_stays_idle(
    conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    """The Rust extension's bug: a publish sat in a buffer until the session's next call."""
    conn.execute("SELECT nats_publish_text('t.warmup', 'connect first')")
    received = nats_side.subscribe(nats_url, "t.lone")
    conn.execute("SELECT nats_publish_text('t.lone', 'only one')")
    # No further call on `conn` while we wait.
    assert received.next(timeout=2).data == b"only one"


def test_publish_then_disconnect_still_arrives(
    stack: Stack, db: str, nats_url: str, nats_side: NatsSide
) -> None:
    received = nats_side.subscribe(nats_url, "t.last")
    with admin_connect(stack, db) as session:
        session.execute("SELECT nats_publish_text('t.last', 'last words')")
    assert received.next(timeout=2).data == b"last words"


def test_publish_in_a_transaction_is_sent_at_once(
    conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    """Core NATS is not transactional: the message leaves when the function runs."""
    received = nats_side.subscribe(nats_url, "t.tx")
    with conn.transaction():
        conn.execute("SELECT nats_publish_text('t.tx', 'before commit')")
        assert received.next(timeout=2).data == b"before commit"


def test_publish_from_plpgsql_as_in_the_guide(
    conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    received = nats_side.subscribe(nats_url, "email.send")
    conn.execute(
        """
        CREATE FUNCTION welcome(email text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM nats_publish_jsonb(
                'email.send',
                jsonb_build_object('to', email, 'template', 'welcome'),
                NULL,
                NULL
            );
        END $$
        """
    )
    conn.execute("SELECT welcome('john@example.com')")
    assert json.loads(received.next().data) == {"to": "john@example.com", "template": "welcome"}


# -- headers -----------------------------------------------------------------------------


class RawSubscriber:
    """Reads the server's bytes for one subscription as they are, to check header blocks
    exactly (nats-py folds repeated header names into one value)."""

    def __init__(self, port: int, subject: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.recv(65536)
        self.sock.sendall(
            b'CONNECT {"verbose":false,"headers":true}\r\nSUB %b 1\r\nPING\r\n' % subject.encode()
        )
        self.data = b""
        self.read_until(b"PONG\r\n")
        self.data = b""

    def read_until(self, marker: bytes) -> bytes:
        deadline = time.monotonic() + 5
        while marker not in self.data:
            assert time.monotonic() < deadline, f"no {marker!r} in {self.data!r}"
            self.data += self.sock.recv(65536)
        return self.data

    def close(self) -> None:
        self.sock.close()


def test_headers_arrive_exactly(stack: Stack, conn: Conn) -> None:
    raw = RawSubscriber(stack.nats.port, "t.headers")
    try:
        conn.execute(
            "SELECT nats_publish_text('t.headers', 'body', NULL, %s::jsonb)",
            (json.dumps({"X-One": "1", "X-Many": ["a", "b"], "X-Text": "grüße ✓"}),),
        )
        data = raw.read_until(b"body\r\n")
    finally:
        raw.close()
    # jsonb orders keys by length then bytes: X-One, X-Many, X-Text.
    block = "NATS/1.0\r\nX-One: 1\r\nX-Many: a\r\nX-Many: b\r\nX-Text: grüße ✓\r\n\r\n".encode()
    expected = b"HMSG t.headers 1 %d %d\r\n%bbody\r\n" % (len(block), len(block) + 4, block)
    assert data == expected


def test_headers_as_nats_py_sees_them(conn: Conn, nats_url: str, nats_side: NatsSide) -> None:
    received = nats_side.subscribe(nats_url, "t.headers")
    conn.execute(
        "SELECT nats_publish_jsonb('t.headers', '{\"k\": 1}', 'r.x', "
        '\'{"Content-Type": "application/json", "X-Name": "Zoë 日本"}\')'
    )
    message = received.next()
    assert message.data == b'{"k": 1}'
    assert message.reply == "r.x"
    assert message.headers == {"Content-Type": "application/json", "X-Name": "Zoë 日本"}


def test_empty_headers_object_sends_a_plain_message(
    conn: Conn, nats_url: str, nats_side: NatsSide
) -> None:
    received = nats_side.subscribe(nats_url, "t.noheaders")
    conn.execute("SELECT nats_publish_text('t.noheaders', 'x', NULL, '{}')")
    message = received.next()
    assert message.data == b"x"
    assert not message.headers


def test_large_messages_arrive_whole(conn: Conn, nats_url: str, nats_side: NatsSide) -> None:
    """30 MB in one statement: more than the socket buffers hold, so sends wait and resume."""
    received = nats_side.subscribe(nats_url, "t.large")
    conn.execute(
        "SELECT count(nats_publish_binary('t.large', "
        "  decode(lpad(to_hex(i), 8, '0'), 'hex') || decode(repeat('ab', 1000 * 1000), 'hex'))) "
        "FROM generate_series(1, 30) i"
    )
    messages = received.take(30, timeout=30)
    assert [int.from_bytes(m.data[:4], "big") for m in messages] == list(range(1, 31))
    assert all(m.data[4:] == b"\xab" * 1_000_000 for m in messages)


@pytest.mark.parametrize(
    ("statement", "subject", "payload"),
    [
        (
            "SELECT nats_publish_text('demo.messages', 'Test message', NULL, NULL)",
            "demo.messages",
            b"Test message",
        ),
        (
            "SELECT nats_publish_jsonb(\n"
            "    'orders.new',\n"
            """    '{"order_id": 123, "customer": "John Doe", "amount": 99.99}'::jsonb,\n"""
            "    NULL,\n"
            "    NULL\n"
            ")",
            "orders.new",
            b'{"amount": 99.99, "customer": "John Doe", "order_id": 123}',
        ),
    ],
)
def test_guide_statements(
    conn: Conn, nats_url: str, nats_side: NatsSide, statement: str, subject: str, payload: bytes
) -> None:
    """Statements of shared/seed/background-workers-guide.md, as written there."""
    received = nats_side.subscribe(nats_url, subject)
    conn.execute(statement)
    assert received.next().data == payload
