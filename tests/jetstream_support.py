"""Helpers for the JetStream tests: a nats-py client in the test process (to set up streams
and to check what SQL calls stored), unique names, and SQL error checks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import psycopg
import pytest
from nats.js import JetStreamContext

T = TypeVar("T")

Conn = psycopg.Connection[tuple[Any, ...]]


def unique(prefix: str) -> str:
    """A name no other test uses (the session's NATS server is shared by all tests)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def with_jetstream(url: str, action: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    """Run ``action`` with a JetStream context of a fresh nats-py connection to ``url``."""

    async def main() -> T:
        client = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
        try:
            return await action(client.jetstream(timeout=5))
        finally:
            await client.close()

    return asyncio.run(main())


def add_stream(url: str, name: str, subjects: list[str]) -> None:
    async def add(js: JetStreamContext) -> None:
        await js.add_stream(name=name, subjects=subjects)

    with_jetstream(url, add)


def stream_messages(url: str, stream: str) -> list[tuple[str, bytes]]:
    """(subject, payload) of every message in ``stream``, oldest first."""

    async def read(js: JetStreamContext) -> list[tuple[str, bytes]]:
        info = await js.stream_info(stream)
        messages = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(stream, seq)
            messages.append((str(message.subject), bytes(message.data or b"")))
        return messages

    return with_jetstream(url, read)


def stream_exists(url: str, stream: str) -> bool:
    async def exists(js: JetStreamContext) -> bool:
        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return False
        return True

    return with_jetstream(url, exists)


def sql_error(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> psycopg.Error:
    """The error ``query`` raises (the test fails if it raises none)."""
    with pytest.raises(psycopg.Error) as excinfo:
        conn.execute(query, params)
    return excinfo.value


def assert_sql_error(
    conn: Conn, query: str, params: tuple[Any, ...], sqlstate: str, message: str
) -> psycopg.Error:
    """``query`` fails with ``sqlstate`` and a message that starts with "pgnats: " and
    contains ``message``."""
    error = sql_error(conn, query, params)
    primary = error.diag.message_primary or ""
    assert error.sqlstate == sqlstate, f"{error.sqlstate}: {primary}"
    assert primary.startswith("pgnats: "), primary
    assert message in primary, primary
    return error


def scalar(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]
