"""Fixtures for the worker's tests: pgnats-worker processes against the session cluster,
publishing from the test process with nats-py, and bounded waits."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

from devstack.stack import Stack
from devstack.worker import WorkerProcess
from tests.conftest import admin_connect

# Short intervals, so that tests wait for tenths of seconds, not seconds.
FAST_ARGS = [
    "--rescan-interval",
    "0.3",
    "--reconcile-interval",
    "1",
    "--heartbeat-interval",
    "0.3",
    "--nats-reconnect-wait",
    "0.2",
    "--log-level",
    "DEBUG",
]

Conn = psycopg.Connection[tuple[Any, ...]]
StartWorker = Callable[..., WorkerProcess]

_worker_numbers = itertools.count(1)


@pytest.fixture
def start_worker(stack: Stack, tmp_path: Path) -> Iterator[StartWorker]:
    """Starts pgnats-worker processes (stopped, and killed if need be, after the test)."""
    started: list[WorkerProcess] = []

    def start(*args: str, dsn: str | None = None) -> WorkerProcess:
        worker = WorkerProcess(
            dsn=dsn or stack.postgres.url(),
            log_path=tmp_path / f"worker-{next(_worker_numbers)}.log",
            args=[*FAST_ARGS, *args],
        )
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=15)


@pytest.fixture
def worker(start_worker: StartWorker) -> WorkerProcess:
    """One pgnats-worker serving the session cluster."""
    return start_worker()


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def scalar(conn: Conn, query: str, params: Iterable[Any] = ()) -> Any:
    row = conn.execute(query, tuple(params)).fetchone()
    assert row is not None
    return row[0]


def wait_value(
    conn: Conn, query: str, expected: Any, timeout: float = 10.0, params: Iterable[Any] = ()
) -> None:
    """Wait until ``query`` returns ``expected`` (its last value is in the error)."""
    params = tuple(params)
    last: list[Any] = [None]

    def check() -> bool:
        last[0] = scalar(conn, query, params)
        return bool(last[0] == expected)

    try:
        wait_until(check, timeout, what=query)
    except TimeoutError:
        raise AssertionError(f"{query!r} returned {last[0]!r}, expected {expected!r}") from None


def wait_subscribed(conn: Conn, subject: str, timeout: float = 10.0) -> None:
    """Wait until the worker reports a live NATS subscription for every callback of
    ``subject`` (pgnats.subscription_status.subscribed)."""
    wait_value(
        conn,
        "SELECT count(*) > 0 AND bool_and(subscribed) FROM pgnats.subscription_status "
        "WHERE subject = %s",
        True,
        timeout,
        (subject,),
    )


def wait_not_subscribed(conn: Conn, subject: str, timeout: float = 10.0) -> None:
    """Wait until the worker has no NATS subscription for ``subject`` any more."""
    wait_value(
        conn,
        "SELECT %s = ANY (subscribed) FROM pgnats.worker_status",
        False,
        timeout,
        (subject,),
    )


def publish(url: str, subject: str, payloads: Iterable[bytes | str]) -> None:
    """Publish from the test process with nats-py, and make sure the server has them."""

    async def send() -> None:
        client = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
        try:
            for payload in payloads:
                data = payload.encode() if isinstance(payload, str) else payload
                await client.publish(subject, data)
            await client.flush(timeout=5)
        finally:
            await client.close()

    asyncio.run(send())


def connect(stack: Stack, dbname: str) -> Conn:
    return admin_connect(stack, dbname)


def make_log_table(conn: Conn, callback: str = "log_message", table: str = "message_log") -> None:
    """A table and a plpgsql callback inserting each payload (as text) and the role it
    ran as; a payload 'fail' raises after the insert."""
    conn.execute(
        f"""
        CREATE TABLE {table} (
            id serial PRIMARY KEY,
            message text NOT NULL,
            run_as text NOT NULL DEFAULT current_user,
            received_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE FUNCTION {callback}(payload bytea) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO {table} (message) VALUES (convert_from(payload, 'UTF8'));
            IF convert_from(payload, 'UTF8') = 'fail' THEN
                RAISE EXCEPTION 'refusing payload %', convert_from(payload, 'UTF8')
                    USING ERRCODE = 'check_violation';
            END IF;
        END
        $$;
        """
    )


def messages(conn: Conn, table: str = "message_log") -> list[str]:
    return [str(row[0]) for row in conn.execute(f"SELECT message FROM {table} ORDER BY id")]
