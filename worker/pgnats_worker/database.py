"""Serving one database: its control connection, its NATS link, its dispatchers.

The control connection LISTENs on channel ``pgnats`` (payloads ``subscriptions``, ``reload``,
``reload_force``), reconciles the NATS subscriptions with pgnats.subscriptions after every
(re)connect, on every notification and every ``reconcile_interval`` seconds (a notification
sent while the worker was reconnecting is lost), re-reads the NATS settings on ``reload``
and at every reconcile (a changed one gets a new NATS connection that takes over without a
gap, see handover.py), and writes the heartbeat row that
pgnats.worker_status and pgnats.subscription_status show. It also holds an advisory lock,
so that a second worker started on the same cluster stands by instead of processing every
message twice.

Received messages wait in per-role queues, bounded per database by ``queue_limit``
deliveries and ``queue_bytes`` of payload. At the bound new messages are dropped: counted
per subscription (``dropped`` in pgnats.subscription_status), in the heartbeat, and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from typing import Any

import psycopg
from pgnats import __version__
from pgnats.errors import PgnatsError
from pgnats.notifications import CHANNEL, RELOAD, RELOAD_FORCE, SUBSCRIPTIONS_CHANGED
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from psycopg.types.numeric import Oid

from pgnats_worker.backoff import Backoff
from pgnats_worker.catalog import (
    HAS_EXTENSION_QUERY,
    load_queue_group,
    load_settings,
    load_subscriptions,
)
from pgnats_worker.dispatch import RoleDispatcher
from pgnats_worker.handover import NatsLinks
from pgnats_worker.logs import RateLimit, describe, log_event
from pgnats_worker.model import Delivery, Target
from pgnats_worker.nats_link import NatsLink
from pgnats_worker.options import WorkerOptions

Conn = psycopg.AsyncConnection[Any]

# pg_try_advisory_lock key held by the worker serving a database: "pgnats" in ASCII.
WORKER_LOCK_KEY = 0x70676E617473
# How long the control loop waits for a notification before looking at its timers.
POLL_INTERVAL = 0.25

HEARTBEAT_UPSERT = """
INSERT INTO pgnats.worker_heartbeat AS h
       (singleton, pid, host, version, started_at, heartbeat_at, heartbeat_interval,
        nats_connected, nats_server, nats_queue_group, serving, queued, dropped)
VALUES (true, %s, %s, %s, pg_catalog.to_timestamp(%s), pg_catalog.now(),
        pg_catalog.make_interval(secs => %s), %s, %s, %s, %s, %s, %s)
ON CONFLICT (singleton) DO UPDATE
   SET pid = excluded.pid, host = excluded.host, version = excluded.version,
       started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
       heartbeat_interval = excluded.heartbeat_interval,
       nats_connected = excluded.nats_connected, nats_server = excluded.nats_server,
       nats_queue_group = excluded.nats_queue_group,
       serving = excluded.serving, queued = excluded.queued, dropped = excluded.dropped
"""

DROPPED_UPSERT = """
INSERT INTO pgnats.subscription_stats AS st (subject, callback, dropped)
SELECT u.subject, u.callback, u.dropped
  FROM ROWS FROM (pg_catalog.unnest(%s::pg_catalog.text[]), pg_catalog.unnest(%s::pg_catalog.oid[]),
                  pg_catalog.unnest(%s::pg_catalog.int8[]))
       AS u(subject, callback, dropped)
 WHERE EXISTS (SELECT FROM pgnats.subscriptions s
                WHERE s.subject = u.subject AND s.callback::pg_catalog.oid = u.callback)
ON CONFLICT (subject, callback) DO UPDATE SET dropped = st.dropped + excluded.dropped
"""

FORGET_ORPHAN_STATS = """
DELETE FROM pgnats.subscription_stats st
 WHERE NOT EXISTS (SELECT FROM pgnats.subscriptions s
                    WHERE s.subject = st.subject AND s.callback::pg_catalog.oid = st.callback)
"""


class DatabaseGone(Exception):
    """The database was dropped, or the extension was removed from it."""


class DatabaseWorker:
    def __init__(self, name: str, options: WorkerOptions, started_at: float) -> None:
        self.name = name
        self.options = options
        self._started_at = started_at
        self._stopping = False
        self._receiving = True
        self._queue_group = ""
        self._settings_error: str | None = None
        self._targets: dict[str, tuple[Target, ...]] = {}
        self._dispatchers: dict[int, RoleDispatcher] = {}
        self._retired: list[RoleDispatcher] = []
        self._queued = 0
        self._queued_bytes = 0
        self._dropped_total = 0
        self._dropped_pending: Counter[tuple[str, int]] = Counter()
        self._drop_log = RateLimit(burst=1, period=10.0)
        self._orphans: list[str] = []
        self._state_changed = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._nats = NatsLinks(
            database=name,
            reconnect_wait=options.nats_reconnect_wait,
            on_message=self._on_message,
            on_change=self._state_changed.set,
        )
        self._known: dict[tuple[str, int], Target] = {}
        self.task: asyncio.Task[None] | None = None

    def conninfo(self, purpose: str) -> str:
        return make_conninfo(
            self.options.dsn,
            dbname=self.name,
            application_name=f"pgnats-worker {purpose}",
            connect_timeout=max(1, round(self.options.connect_timeout)),
        )

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"database {self.name}")

    # -- shutdown, in the order the supervisor calls them --------------------------------
    async def stop_receiving(self) -> None:
        self._receiving = False
        await self._nats.close()

    def finish(self) -> None:
        for dispatcher in self._all_dispatchers():
            dispatcher.stop()

    async def wait_dispatchers(self) -> None:
        tasks = [d.task for d in self._all_dispatchers() if d.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def abort(self) -> None:
        await asyncio.gather(*(d.abort() for d in self._all_dispatchers() if not d.done))

    async def close(self) -> None:
        self._stopping = True
        self._stop_event.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 5.0)
            except (TimeoutError, asyncio.CancelledError):
                self.task.cancel()

    @property
    def queued(self) -> int:
        return self._queued

    def _all_dispatchers(self) -> list[RoleDispatcher]:
        return [*self._dispatchers.values(), *self._retired]

    # -- the control loop ----------------------------------------------------------------
    async def run(self) -> None:
        backoff = Backoff(maximum=5.0)
        lost_log = RateLimit(burst=1, period=30.0)
        try:
            while not self._stopping:
                try:
                    conn = await psycopg.AsyncConnection.connect(
                        self.conninfo("control"), autocommit=True
                    )
                except psycopg.errors.InvalidCatalogName:
                    raise DatabaseGone("the database no longer exists") from None
                except psycopg.OperationalError as exc:
                    if lost_log.allow():
                        log_event(
                            logging.WARNING,
                            f"cannot connect to PostgreSQL, retrying: {describe(exc)}",
                            database=self.name,
                        )
                    await self._sleep(backoff.next_delay())
                    continue
                try:
                    async with conn:
                        await self._serve(conn, backoff)
                except DatabaseGone:
                    raise
                except psycopg.Error as exc:
                    if not conn.closed and not conn.broken:
                        await self._check_extension(conn)
                    if lost_log.allow():
                        log_event(
                            logging.WARNING,
                            f"lost the control connection, reconnecting: {describe(exc)}",
                            database=self.name,
                        )
                    await self._sleep(backoff.next_delay())
                except Exception as exc:  # a bug: keep serving, and say so
                    log_event(
                        logging.ERROR,
                        f"control loop failed, restarting it: {exc!r}",
                        database=self.name,
                    )
                    logging.getLogger(__name__).debug("control loop failure", exc_info=True)
                    await self._sleep(backoff.next_delay())
        except DatabaseGone as gone:
            # Nowhere left to run or record the messages held for it.
            log_event(logging.INFO, f"no longer served: {gone}", database=self.name)
            await self.stop_receiving()
            self.finish()
            await self.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_dispatchers(), 10.0)

    async def _check_extension(self, conn: Conn) -> None:
        try:
            cursor = await conn.execute(HAS_EXTENSION_QUERY)
            present = await cursor.fetchone() is not None
        except psycopg.Error:
            return
        if not present:
            raise DatabaseGone("the pgnats extension was dropped")

    async def _serve(self, conn: Conn, backoff: Backoff) -> None:
        if not await self._take_lock(conn):
            return
        await conn.execute(f"LISTEN {CHANNEL}")
        self._queue_group = await load_queue_group(conn)
        await self._apply_settings(conn, force=False)
        await self._reconcile(conn)
        await self._heartbeat(conn)
        backoff.reset()
        log_event(logging.INFO, "serving this database", database=self.name)
        now = time.monotonic()
        next_reconcile = now + self.options.reconcile_interval
        next_heartbeat = now + self.options.heartbeat_interval
        while not self._stopping:
            received: set[str] = set()
            async for notify in conn.notifies(timeout=POLL_INTERVAL, stop_after=1):
                received.add(notify.payload)
            now = time.monotonic()
            reconcile_due = now >= next_reconcile
            # Settings changed without pgnats_reload_conf() are picked up at the next
            # reconcile: a reconnect loses nothing (handover.py), so it need not wait.
            if RELOAD in received or RELOAD_FORCE in received or reconcile_due:
                await self._apply_settings(conn, force=RELOAD_FORCE in received)
            if SUBSCRIPTIONS_CHANGED in received or reconcile_due:
                await self._reconcile(conn)
                next_reconcile = now + self.options.reconcile_interval
            if self._state_changed.is_set() or now >= next_heartbeat:
                self._state_changed.clear()
                await self._heartbeat(conn)
                next_heartbeat = now + self.options.heartbeat_interval
            self._reap_retired()
        await conn.execute("DELETE FROM pgnats.worker_heartbeat")

    async def _take_lock(self, conn: Conn) -> bool:
        """The advisory lock of the serving worker; waits (standing by) while another has it."""
        announced = False
        while not self._stopping:
            cursor = await conn.execute(
                "SELECT pg_catalog.pg_try_advisory_lock(%s)", (WORKER_LOCK_KEY,)
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                return True
            if not announced:
                log_event(
                    logging.WARNING,
                    "another pgnats worker serves this database; standing by",
                    database=self.name,
                )
                announced = True
                if self._nats.current is not None:  # we served it before losing the lock
                    await self.stop_receiving()
                    self._receiving = True
            await self._sleep(self.options.rescan_interval)
        return False

    # -- settings and NATS ---------------------------------------------------------------
    async def _apply_settings(self, conn: Conn, *, force: bool) -> None:
        try:
            settings = await load_settings(conn)
        except PgnatsError as exc:
            if str(exc) != self._settings_error:  # once, not at every reconcile
                self._settings_error = str(exc)
                log_event(
                    logging.ERROR,
                    f"invalid NATS settings, keeping the old ones: {exc}",
                    database=self.name,
                )
            return
        self._settings_error = None
        if not self._receiving or (not force and not self._nats.wants(settings, self._queue_group)):
            return
        if self._nats.current is not None:
            # The current connection goes on receiving until the new one has taken over.
            reason = "pgnats_reload_conf_force()" if force else "settings changed"
            log_event(logging.INFO, f"reconnecting to NATS ({reason})", database=self.name)
            if force:
                for dispatcher in self._dispatchers.values():
                    dispatcher.request_reconnect()
        await self._nats.connect(settings, self._queue_group)

    # -- subscriptions -------------------------------------------------------------------
    async def _reconcile(self, conn: Conn) -> None:
        try:
            wanted, orphans = await load_subscriptions(conn)
        except psycopg.errors.UndefinedTable:
            raise DatabaseGone("the pgnats extension was dropped") from None
        if orphans != self._orphans:
            for orphan in orphans:
                log_event(logging.WARNING, f"subscription not served: {orphan}", database=self.name)
            self._orphans = orphans
        self._targets = wanted
        self._log_changes(wanted)
        roles = {target.role: target.role_name for targets in wanted.values() for target in targets}
        for role, role_name in roles.items():
            if role not in self._dispatchers and self._receiving:
                self._dispatchers[role] = self._new_dispatcher(role, role_name)
        for role in set(self._dispatchers) - set(roles):
            dispatcher = self._dispatchers.pop(role)
            dispatcher.stop()
            self._retired.append(dispatcher)
        if self._receiving:
            await self._nats.sync(set(wanted))
        await conn.execute(FORGET_ORPHAN_STATS)
        self._state_changed.set()

    def _log_changes(self, wanted: dict[str, tuple[Target, ...]]) -> None:
        current = {(s, t.callback): t for s, targets in wanted.items() for t in targets}
        for key in sorted(set(current) - set(self._known)):
            target = current[key]
            log_event(
                logging.INFO,
                "subscribed",
                database=self.name,
                subject=key[0],
                callback=target.callback_name,
                role=target.role_name,
            )
        for key in sorted(set(self._known) - set(current)):
            target = self._known[key]
            log_event(
                logging.INFO,
                "unsubscribed",
                database=self.name,
                subject=key[0],
                callback=target.callback_name,
                role=target.role_name,
            )
        self._known = current

    def _new_dispatcher(self, role: int, role_name: str) -> RoleDispatcher:
        dispatcher = RoleDispatcher(
            database=self.name,
            conninfo=self.conninfo(f"dispatch {role_name}"),
            target_role=role,
            role_name=role_name,
            batch_size=self.options.batch_size,
            on_done=self._on_done,
        )
        dispatcher.start()
        return dispatcher

    def _reap_retired(self) -> None:
        self._retired = [d for d in self._retired if not d.done]

    # -- messages ------------------------------------------------------------------------
    def _on_message(self, subscription: str, subject: str, payload: bytes) -> None:
        targets = self._targets.get(subscription)
        if not targets:
            return  # unsubscribed a moment ago: no callback left for it
        size = len(payload) * len(targets)
        if (
            self._queued + len(targets) > self.options.queue_limit
            or self._queued_bytes + size > self.options.queue_bytes
        ):
            for target in targets:
                self._dropped_pending[(subscription, target.callback)] += 1
            self._dropped_total += len(targets)
            if self._drop_log.allow():
                log_event(
                    logging.ERROR,
                    f"queue full ({self._queued} messages, {self._queued_bytes} bytes waiting "
                    "for PostgreSQL): dropping "
                    f"messages; {self._dropped_total} dropped so far",
                    database=self.name,
                    subject=subject,
                )
            return
        received_at = time.time()
        for target in targets:
            dispatcher = self._dispatchers.get(target.role)
            if dispatcher is None:
                dispatcher = self._dispatchers[target.role] = self._new_dispatcher(
                    target.role, target.role_name
                )
            dispatcher.enqueue(Delivery(subscription, subject, payload, received_at, target))
        self._queued += len(targets)
        self._queued_bytes += size

    def _on_done(self, count: int, size: int) -> None:
        self._queued -= count
        self._queued_bytes -= size

    # -- heartbeat -----------------------------------------------------------------------
    async def _heartbeat(self, conn: Conn) -> None:
        link = self._nats.current
        dropped = dict(self._dropped_pending)
        async with conn.transaction():
            await conn.execute(
                HEARTBEAT_UPSERT,
                (
                    os.getpid(),
                    socket.gethostname(),
                    __version__,
                    self._started_at,
                    self.options.heartbeat_interval,
                    link is not None and link.connected,
                    link.server if link is not None else None,
                    link.queue_group if link is not None else None,
                    Jsonb(self._serving(link)),
                    self._queued,
                    self._dropped_total,
                ),
            )
            if dropped:
                await conn.execute(
                    DROPPED_UPSERT,
                    (
                        [subject for subject, _ in dropped],
                        [Oid(callback) for _, callback in dropped],
                        list(dropped.values()),
                    ),
                )
        self._dropped_pending.subtract(dropped)
        self._dropped_pending = +self._dropped_pending

    def _serving(self, link: NatsLink | None) -> list[dict[str, Any]]:
        """The subscriptions with a live NATS subscription, for the heartbeat."""
        if link is None or not self._receiving:
            return []
        live = set(link.subscribed)
        return [
            {"subject": subject, "callback": target.callback}
            for subject, targets in sorted(self._targets.items())
            if subject in live
            for target in targets
        ]

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)
