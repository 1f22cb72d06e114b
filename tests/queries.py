"""Small SQL helpers shared by the tests of the core NATS functions."""

from __future__ import annotations

import psycopg

Conn = psycopg.Connection[tuple[object, ...]]


def scalar(conn: Conn, sql: str, *params: object) -> object:
    """The first column of the one row ``sql`` returns."""
    row = conn.execute(sql, params or None).fetchone()
    assert row is not None
    return row[0]


def client_id(conn: Conn) -> object:
    """The server's id for this session's NATS connection: it changes when pgnats reconnects."""
    return scalar(conn, "SELECT (nats_get_server_info()).client_id")
