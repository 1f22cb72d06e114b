"""The transactions a dispatcher runs on its connection, and how their errors are told apart.

Three kinds, all starting with ``BEGIN; SELECT pg_current_xact_id()`` and ending with a
separate ``COMMIT`` (so that a connection lost during COMMIT is the only
ambiguous case, and the transaction ID resolves it):

- optimistic: every group in one statement each, pipelined (one round trip);
- isolating: each group in a savepoint, run again message by message when it fails, and the
  failures recorded in the same transaction;
- bookkeeping: only record failures (nothing could run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.numeric import Oid

from pgnats_worker.batch import Group, failure_from_error, trim_context
from pgnats_worker.model import Failure
from pgnats_worker.payloads import PayloadArray

Conn = psycopg.AsyncConnection[Any]
Body = Callable[[Conn], Awaitable[None]]

SQLSTATE_DISPATCHER_MODIFIED = "PN101"

XID_QUERY = "SELECT pg_catalog.pg_current_xact_id()::pg_catalog.text"
PREPARE_QUERY = "SELECT pgnats._prepare_dispatch(%s)"
DISPATCH_QUERY = "SELECT * FROM pgnats._dispatch(%s, %s, %s, %s, %s)"
XACT_STATUS_QUERY = "SELECT pg_catalog.pg_xact_status(%s::pg_catalog.xid8)"

COUNT_QUERY = "SELECT pgnats._count(%s, %s, %s, %s)"

FAILURES_INSERT = """
INSERT INTO pgnats.subscription_failures
       (subject, subscription, callback, role, payload, error, sqlstate, detail, hint, context,
        received_at)
SELECT * FROM ROWS FROM (
       pg_catalog.unnest(%s::pg_catalog.text[]), pg_catalog.unnest(%s::pg_catalog.text[]),
       pg_catalog.unnest(%s::pg_catalog.text[]), pg_catalog.unnest(%s::pg_catalog.text[]),
       pg_catalog.unnest(%s::pg_catalog.bytea[]), pg_catalog.unnest(%s::pg_catalog.text[]),
       pg_catalog.unnest(%s::pg_catalog.text[]), pg_catalog.unnest(%s::pg_catalog.text[]),
       pg_catalog.unnest(%s::pg_catalog.text[]), pg_catalog.unnest(%s::pg_catalog.text[]),
       pg_catalog.unnest(%s::pg_catalog.timestamptz[]))
"""


class ConnectionLost(Exception):
    """The connection broke; ``xid`` is set when it broke during COMMIT."""

    def __init__(self, xid: str | None) -> None:
        super().__init__(xid)
        self.xid = xid


class Aborted(Exception):
    """The work in flight was cancelled because the worker is stopping."""


class BatchFailed(Exception):
    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.error = error


def is_lost(conn: Conn) -> bool:
    return bool(conn.closed or conn.broken)


def raise_if_lost_or_aborted(conn: Conn, aborted: asyncio.Event) -> None:
    """After an error: raise ConnectionLost or Aborted when that is what it was."""
    if is_lost(conn):
        raise ConnectionLost(None)
    if aborted.is_set():
        raise Aborted()


async def run_transaction(
    conn: Conn, body: Body, *, pipelined: bool, aborted: asyncio.Event
) -> None:
    """BEGIN, read the transaction ID, run ``body``, COMMIT.

    Raises ConnectionLost (with the ID when the connection broke during COMMIT), Aborted,
    or BatchFailed for any other error (the transaction is then to be rolled back).
    """
    xid: str | None = None
    try:
        if pipelined:
            async with conn.pipeline():
                await conn.execute("BEGIN")
                cursor = await conn.execute(XID_QUERY)
                await body(conn)
        else:
            await conn.execute("BEGIN")
            cursor = await conn.execute(XID_QUERY)
            await body(conn)
        row = await cursor.fetchone()
        assert row is not None
        xid = str(row[0])
    except psycopg.Error as exc:
        raise_if_lost_or_aborted(conn, aborted)
        raise BatchFailed(exc) from exc
    try:
        await conn.execute("COMMIT")
    except psycopg.Error as exc:
        if is_lost(conn):
            raise ConnectionLost(xid) from exc
        raise BatchFailed(exc) from exc


def dispatch_params(role: int, group: Group, *, isolate: bool) -> tuple[Any, ...]:
    return (Oid(role), group.subscription, Oid(group.target.callback), group.payloads, isolate)


def optimistic(role: int, groups: list[Group]) -> Body:
    async def body(conn: Conn) -> None:
        for group in groups:  # pgnats._dispatch counts what it ran
            await conn.execute(DISPATCH_QUERY, dispatch_params(role, group, isolate=False))

    return body


def isolating(role: int, groups: list[Group], aborted: asyncio.Event) -> Body:
    async def body(conn: Conn) -> None:
        # Deferred constraints are checked per message, where a failure can be isolated.
        await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        uncounted = [
            group for group in groups if not await _run_isolated(conn, role, group, aborted)
        ]
        await write_bookkeeping(conn, groups, uncounted)

    return body


def bookkeeping(groups: list[Group]) -> Body:
    """Record every delivery's failure (set before), without running any callback."""

    async def body(conn: Conn) -> None:
        await write_bookkeeping(conn, groups, groups)

    return body


async def _run_isolated(conn: Conn, role: int, group: Group, aborted: asyncio.Event) -> bool:
    """Run one group in a savepoint, message by message if it fails as a whole; False when
    it could not run at all (then every delivery has a failure, not counted yet)."""
    await conn.execute("SAVEPOINT pgnats_group")
    try:
        await conn.execute(DISPATCH_QUERY, dispatch_params(role, group, isolate=False))
        await conn.execute("RELEASE SAVEPOINT pgnats_group")
        return True
    except psycopg.Error:
        raise_if_lost_or_aborted(conn, aborted)
        await conn.execute("ROLLBACK TO SAVEPOINT pgnats_group")
    try:
        cursor = await conn.execute(DISPATCH_QUERY, dispatch_params(role, group, isolate=True))
        for idx, sqlstate, message, detail, hint, context in await cursor.fetchall():
            group.failures[idx - 1] = Failure(
                sqlstate, message, detail or None, hint or None, trim_context(context)
            )
        await conn.execute("RELEASE SAVEPOINT pgnats_group")
        return True
    except psycopg.Error as exc:
        # The group cannot run at all: its callback was dropped, or the dispatch function
        # was tampered with (PN101).
        raise_if_lost_or_aborted(conn, aborted)
        await conn.execute("ROLLBACK TO SAVEPOINT pgnats_group")
        group.fail_all(failure_from_error(exc))
        return False


async def write_bookkeeping(conn: Conn, groups: list[Group], uncounted: list[Group]) -> None:
    """Record the failures of ``groups``, and count ``uncounted`` (all failed)."""
    # Undo whatever the callbacks did to the session's settings before our own SQL (and
    # for the next transaction: it is reset in this one).
    await conn.execute("RESET ALL")
    await conn.execute("UNLISTEN *")
    for group in uncounted:
        await conn.execute(
            COUNT_QUERY, (group.subscription, Oid(group.target.callback), 0, len(group.failures))
        )
    failed = [
        (group, group.deliveries[index], failure)
        for group in groups
        for index, failure in sorted(group.failures.items())
    ]
    if not failed:
        return
    await conn.execute(
        FAILURES_INSERT,
        (
            [delivery.subject for _, delivery, _ in failed],
            [group.subscription for group, _, _ in failed],
            [group.target.callback_name for group, _, _ in failed],
            [group.target.role_name for group, _, _ in failed],
            PayloadArray([delivery.payload for _, delivery, _ in failed]),
            [failure.message for _, _, failure in failed],
            [failure.sqlstate for _, _, failure in failed],
            [failure.detail for _, _, failure in failed],
            [failure.hint for _, _, failure in failed],
            [failure.context for _, _, failure in failed],
            [datetime.fromtimestamp(delivery.received_at, UTC) for _, delivery, _ in failed],
        ),
    )
