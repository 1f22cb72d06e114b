"""nats_publish_*: messages arrive, with reply subjects and headers, and leave at once."""

from __future__ import annotations

import psycopg

from tests.nats_helpers import NatsSide

Conn = psycopg.Connection[tuple[object, ...]]


def test_publish_text(conn: Conn, nats_url: str, nats_side: NatsSide) -> None:
    received = nats_side.subscribe(nats_url, "orders.new")
    conn.execute("SELECT nats_publish_text('orders.new', 'hello')")
    message = received.next()
    assert message.data == b"hello"
