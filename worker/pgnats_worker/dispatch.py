"""Calling the callbacks of one role in one database.

A :class:`RoleDispatcher` owns a queue of deliveries and a PostgreSQL connection of its own
(one per role, so that what one role's callbacks leave in the session, temporary tables or
settings, never reaches another role's). It takes everything waiting (up to the batch size),
groups it by subscription and callback, and runs one transaction:

    BEGIN; SELECT pg_current_xact_id();
    SELECT * FROM pgnats._dispatch(role, subject, callback, payloads, false);  -- per group
    COMMIT;

all but the COMMIT in one round trip. pgnats._dispatch runs the callback once per payload in
one statement, as the subscribing role (see pgnats--1.0.sql), adds to the subscription's
counters in pgnats.subscription_stats, and resets the session's settings (see
transactions.py). When anything fails, the batch
is rolled back and run again with every group in a savepoint; a group that fails again is
run message by message, each in a subtransaction, and the failing messages are recorded in
pgnats.subscription_failures in that same transaction. So the common case pays nothing for
the isolation, and a message either reaches its callback's committed work or is recorded.

When the connection is lost before COMMIT was sent, nothing was committed and the batch is
run again. When it is lost during COMMIT, the transaction ID read at BEGIN tells, after
reconnecting, whether it committed (pg_xact_status); only if PostgreSQL cannot tell any more
are the messages recorded as failures with an "outcome unknown" error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.numeric import Oid

from pgnats_worker.backoff import Backoff
from pgnats_worker.batch import (
    OUTCOME_UNKNOWN,
    WORKER_STOPPED,
    Group,
    failure_from_error,
    group_deliveries,
)
from pgnats_worker.logs import RateLimit, describe, log_event, logger
from pgnats_worker.model import Delivery, Failure
from pgnats_worker.payloads import register_payload_arrays
from pgnats_worker.transactions import (
    PREPARE_QUERY,
    SQLSTATE_DISPATCHER_MODIFIED,
    XACT_STATUS_QUERY,
    Aborted,
    BatchFailed,
    ConnectionLost,
    bookkeeping,
    is_lost,
    isolating,
    optimistic,
    raise_if_lost_or_aborted,
    run_transaction,
)

Conn = psycopg.AsyncConnection[Any]

# A batch's payloads go in one bytea[] parameter: keep it well below PostgreSQL's 1 GB.
MAX_BATCH_BYTES = 32 * 1024 * 1024


class RoleDispatcher:
    def __init__(
        self,
        *,
        database: str,
        conninfo: str,
        target_role: int,
        role_name: str,
        batch_size: int,
        on_done: Callable[[int, int], None],
    ) -> None:
        self.database = database
        self.role = target_role
        self.role_name = role_name
        self._conninfo = conninfo
        self._batch_size = batch_size
        self._on_done = on_done
        self.queue: deque[Delivery] = deque()
        self._wakeup = asyncio.Event()
        self._aborted = asyncio.Event()
        self._stopping = False
        self._conn: Conn | None = None
        self._prepared = False
        self._reconnect_requested = False
        self._busy = False
        self._failure_logs: dict[tuple[str, int], RateLimit] = {}
        self._lost_log = RateLimit(burst=1, period=30.0)
        self._notice_log = RateLimit(burst=50, period=10.0)
        self.task: asyncio.Task[None] | None = None

    # -- control from the database worker ---------------------------------------------
    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"dispatch {self.database}/{self.role}")

    def enqueue(self, delivery: Delivery) -> None:
        self.queue.append(delivery)
        self._wakeup.set()

    def stop(self) -> None:
        """Process what is queued, then exit."""
        self._stopping = True
        self._wakeup.set()

    def request_reconnect(self) -> None:
        """Open a new connection before the next batch (pgnats_reload_conf_force)."""
        self._reconnect_requested = True

    async def abort(self) -> None:
        """Cancel the batch in flight (it rolls back whole), record what is left as not
        processed, and exit."""
        self._stopping = True
        self._aborted.set()
        self._wakeup.set()
        conn = self._conn
        if self._busy and conn is not None and not is_lost(conn):
            try:
                await conn.cancel_safe(timeout=2.0)
            except (psycopg.Error, OSError) as exc:
                log_event(logging.DEBUG, f"cancel failed: {exc}", database=self.database)

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    # -- the loop ---------------------------------------------------------------------
    async def run(self) -> None:
        """The loop, restarted (with the queue kept) should it ever fail unexpectedly."""
        backoff = Backoff(initial=0.5, maximum=10.0)
        while True:
            try:
                await self._run()
                return
            except Exception as exc:
                log_event(
                    logging.ERROR,
                    f"dispatcher failed, restarting it: {exc!r}",
                    database=self.database,
                    role=self.role_name,
                )
                logging.getLogger(__name__).debug("dispatcher failure", exc_info=True)
                await self._drop_connection()
                await self._sleep(backoff.next_delay())

    async def _run(self) -> None:
        # Connect now rather than when the first message comes: it is then busy receiving.
        with contextlib.suppress(psycopg.Error, OSError):
            await self._connection()
        try:
            while not self._aborted.is_set():
                if not self.queue:
                    if self._stopping:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = self._take_batch()
                count = len(batch)
                self._busy = True
                started = time.monotonic()
                try:
                    delivered = await self._deliver(batch)
                finally:
                    self._busy = False
                if delivered and logger.isEnabledFor(logging.DEBUG):
                    log_event(
                        logging.DEBUG,
                        f"batch of {count} done in {1000 * (time.monotonic() - started):.1f} ms, "
                        f"oldest waited {1000 * (time.time() - batch[0].received_at):.1f} ms",
                        database=self.database,
                        role=self.role_name,
                    )
                if not delivered:
                    break
                for _ in range(count):
                    self.queue.popleft()
                self._on_done(count, sum(len(delivery.payload) for delivery in batch))
            if self.queue:
                await self._record_abandoned()
        finally:
            await self._close()

    def _take_batch(self) -> list[Delivery]:
        """The oldest deliveries, up to the batch size and MAX_BATCH_BYTES (at least one)."""
        batch: list[Delivery] = []
        size = 0
        for delivery in itertools.islice(self.queue, self._batch_size):
            size += len(delivery.payload)
            if batch and size > MAX_BATCH_BYTES:
                break
            batch.append(delivery)
        return batch

    async def _deliver(self, batch: list[Delivery]) -> bool:
        """Run the batch until it is committed or recorded; False when aborted."""
        groups = group_deliveries(batch)
        recording: Failure | None = None  # set: record every delivery as failed instead
        backoff = Backoff()
        while not self._aborted.is_set():
            try:
                conn = await self._connection(prepare=False)
                if recording is None:
                    try:
                        await self._prepare(conn)
                    except psycopg.Error as exc:
                        if is_lost(conn):
                            raise
                        # The role cannot run anything (it was dropped, say): record.
                        recording = failure_from_error(exc)
                        continue
                    await self._run_batch(conn, groups)
                else:
                    for group in groups:
                        group.fail_all(recording)
                    await run_transaction(
                        conn, bookkeeping(groups), pipelined=True, aborted=self._aborted
                    )
                self._log_failures(groups)
                return True
            except ConnectionLost as lost:
                await self._drop_connection()
                if lost.xid is not None:
                    outcome = await self._resolve(lost.xid)
                    if outcome == "committed":
                        self._log_failures(groups)
                        return True
                    if outcome == "unknown":
                        recording = OUTCOME_UNKNOWN
                        continue
                if self._lost_log.allow():
                    log_event(
                        logging.WARNING,
                        "lost the connection to PostgreSQL; the batch will be run again",
                        database=self.database,
                        role=self.role_name,
                        messages=len(batch),
                    )
                await self._sleep(backoff.next_delay())
            except Aborted:
                await self._rollback_quietly()
                return False
            except (psycopg.Error, OSError) as exc:
                # Could not connect (or prepare the connection): try again, forever.
                await self._drop_connection()
                if self._lost_log.allow():
                    log_event(
                        logging.WARNING,
                        f"cannot reach PostgreSQL, retrying: {describe(exc)}",
                        database=self.database,
                        role=self.role_name,
                    )
                await self._sleep(backoff.next_delay())
            except BatchFailed as failed:
                # Even recording the failures did not work (a read-only database, a full
                # disk): keep the messages and try again later.
                await self._rollback_quietly()
                log_event(
                    logging.ERROR,
                    f"cannot record the batch, retrying: {describe(failed.error)}",
                    database=self.database,
                    role=self.role_name,
                    messages=len(batch),
                )
                await self._sleep(backoff.next_delay())
        return False

    async def _run_batch(self, conn: Conn, groups: list[Group]) -> None:
        for group in groups:
            group.failures = {}
        try:
            await run_transaction(
                conn, optimistic(self.role, groups), pipelined=True, aborted=self._aborted
            )
            return
        except BatchFailed:
            await self._rollback(conn)
        try:
            await run_transaction(
                conn,
                isolating(self.role, groups, self._aborted),
                pipelined=False,
                aborted=self._aborted,
            )
            if any(
                failure.sqlstate == SQLSTATE_DISPATCHER_MODIFIED
                for group in groups
                for failure in group.failures.values()
            ):
                self._prepared = False  # make it again before the next batch
            return
        except BatchFailed as failed:
            # Not a callback's failure (those are isolated): the counters, or COMMIT (a
            # deferred constraint, say). Record every message with that error instead.
            await self._rollback(conn)
            failure = failure_from_error(failed.error)
        for group in groups:
            group.fail_all(failure)
        await run_transaction(conn, bookkeeping(groups), pipelined=True, aborted=self._aborted)

    # -- connection state ---------------------------------------------------------------
    async def _connection(self, *, prepare: bool = True) -> Conn:
        """The connection, opened (and its dispatch function made) if need be."""
        conn = self._conn
        if conn is not None and (is_lost(conn) or self._reconnect_requested):
            await self._drop_connection()
            conn = None
        if conn is None:
            self._reconnect_requested = False
            # No server-side prepared statements: psycopg loses track of them when a
            # pipeline aborts, and these statements are cheap to plan.
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, prepare_threshold=None
            )
            conn.add_notice_handler(self._on_notice)
            register_payload_arrays(conn.adapters)
            self._conn = conn
            self._prepared = False
        if prepare:
            await self._prepare(conn)
        return conn

    async def _prepare(self, conn: Conn) -> None:
        if not self._prepared:
            await conn.execute(PREPARE_QUERY, (Oid(self.role),))
            self._prepared = True

    async def _drop_connection(self) -> None:
        """Close the connection; a transaction still open on it is rolled back."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def _close(self) -> None:
        await self._drop_connection()

    async def _rollback(self, conn: Conn) -> None:
        try:
            await conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            raise_if_lost_or_aborted(conn, self._aborted)
            raise BatchFailed(exc) from exc

    async def _rollback_quietly(self) -> None:
        conn = self._conn
        if (
            conn is not None
            and not is_lost(conn)
            and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        ):
            try:
                await conn.execute("ROLLBACK")
            except psycopg.Error:
                await self._drop_connection()

    async def _resolve(self, xid: str) -> str:
        """Whether the transaction ``xid`` committed: 'committed', 'aborted' or 'unknown'."""
        backoff = Backoff(initial=0.05, maximum=2.0)
        while True:
            try:
                conn = await self._connection(prepare=False)
                cursor = await conn.execute(XACT_STATUS_QUERY, (xid,))
                row = await cursor.fetchone()
            except (psycopg.OperationalError, OSError):
                await self._drop_connection()
                if self._aborted.is_set():
                    return "unknown"
                await self._sleep(backoff.next_delay())
                continue
            except psycopg.Error as exc:
                # "transaction ID ... is in the future": not the database it was.
                log_event(
                    logging.WARNING,
                    f"cannot resolve {xid}: {describe(exc)}",
                    database=self.database,
                )
                return "unknown"
            status = row[0] if row is not None else None
            if status == "in progress":
                # The old backend has not noticed yet that its client is gone.
                await self._sleep(backoff.next_delay())
                continue
            log_event(
                logging.INFO if status == "committed" else logging.WARNING,
                f"connection lost during COMMIT; transaction {xid} is {status or 'unknown'}",
                database=self.database,
                role=self.role_name,
            )
            return str(status) if status in ("committed", "aborted") else "unknown"

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._aborted.wait(), delay)

    async def _record_abandoned(self) -> None:
        """At shutdown: record what was not processed, so that it is not lost silently."""
        pending = list(self.queue)
        groups = group_deliveries(pending)
        for group in groups:
            group.fail_all(WORKER_STOPPED)
        try:
            await self._rollback_quietly()
            conn = await self._connection(prepare=False)
            await run_transaction(conn, bookkeeping(groups), pipelined=True, aborted=self._aborted)
        except (psycopg.Error, OSError, ConnectionLost, BatchFailed, Aborted) as exc:
            log_event(
                logging.ERROR,
                f"stopping: {len(pending)} received messages could not be processed or "
                f"recorded and are lost ({describe(exc)})",
                database=self.database,
                role=self.role_name,
            )
            self._on_done(len(pending), sum(len(delivery.payload) for delivery in pending))
            self.queue.clear()
            return
        self._on_done(len(pending), sum(len(delivery.payload) for delivery in pending))
        self.queue.clear()
        log_event(
            logging.WARNING,
            f"stopping: {len(pending)} received messages were not processed; they are "
            "recorded in pgnats.subscription_failures",
            database=self.database,
            role=self.role_name,
        )

    # -- logs -----------------------------------------------------------------------------
    def _log_failures(self, groups: list[Group]) -> None:
        for group in groups:
            key = (group.subscription, group.target.callback)
            limit = self._failure_logs.setdefault(key, RateLimit())
            for index, failure in sorted(group.failures.items()):
                if limit.allow():
                    log_event(
                        logging.WARNING,
                        f"callback failed [{failure.sqlstate}] {failure.message}",
                        database=self.database,
                        subject=group.deliveries[index].subject,
                        callback=group.target.callback_name,
                        role=group.target.role_name,
                    )
            held_back = limit.take_suppressed()
            if held_back:
                log_event(
                    logging.WARNING,
                    f"{held_back} more callback failures (not logged one by one)",
                    database=self.database,
                    subject=group.subscription,
                    callback=group.target.callback_name,
                )

    def _on_notice(self, diag: psycopg.errors.Diagnostic) -> None:
        """A callback's RAISE NOTICE (or WARNING), into the log; at most 50 per 10 s."""
        if self._notice_log.allow():
            log_event(
                logging.INFO,
                f"{diag.severity}: {diag.message_primary}",
                database=self.database,
                role=self.role_name,
            )
        held_back = self._notice_log.take_suppressed()
        if held_back:
            log_event(
                logging.INFO,
                f"{held_back} more notices from callbacks (not logged one by one)",
                database=self.database,
                role=self.role_name,
            )
