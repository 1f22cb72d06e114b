"""The whole worker: finds the databases to serve, and stops cleanly on SIGTERM.

Every ``rescan_interval`` seconds it lists the databases that allow connections and starts
serving each one that has the pgnats extension (so databases created later are picked up).
A :class:`DatabaseWorker` that finds its database or extension gone ends, and the database
is looked at again on the next scan.

Stopping (SIGTERM or SIGINT): NATS subscriptions are drained (no new messages are taken),
the messages already received are processed for up to ``shutdown_timeout`` seconds, then
the batches still in flight are cancelled (rolled back whole) and whatever is left is
recorded in pgnats.subscription_failures. Exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import psycopg
from pgnats import __version__
from psycopg.conninfo import make_conninfo

from pgnats_worker.backoff import Backoff
from pgnats_worker.catalog import DATABASES_QUERY, HAS_EXTENSION_QUERY, IS_SUPERUSER_QUERY
from pgnats_worker.database import DatabaseWorker
from pgnats_worker.logs import RateLimit, describe, log_event
from pgnats_worker.options import WorkerOptions

# After the shutdown timeout: how long cancelled batches get to roll back and be recorded.
ABORT_GRACE = 3.0

EXIT_OK = 0
EXIT_NOT_SUPERUSER = 2


class Supervisor:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self._databases: dict[str, DatabaseWorker] = {}
        self._stop = asyncio.Event()
        self._started_at = time.time()
        self.exit_code = EXIT_OK

    def request_stop(self) -> None:
        self._stop.set()

    def _conninfo(self, dbname: str | None) -> str:
        extra: dict[str, Any] = {
            "application_name": "pgnats-worker",
            "connect_timeout": max(1, round(self.options.connect_timeout)),
        }
        if dbname is not None:
            extra["dbname"] = dbname
        return make_conninfo(self.options.dsn, **extra)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        log_event(logging.INFO, f"pgnats-worker {__version__} starting")
        scanner = asyncio.create_task(self._scan_forever(), name="scan")
        await self._stop.wait()
        scanner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scanner
        await self._shutdown()
        log_event(logging.INFO, "pgnats-worker stopped")
        return self.exit_code

    # -- finding databases ---------------------------------------------------------------
    async def _scan_forever(self) -> None:
        backoff = Backoff(maximum=5.0)
        error_log = RateLimit(burst=1, period=30.0)
        checked_role = False
        while not self._stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo(None), autocommit=True
                ) as conn:
                    if not checked_role:
                        if not await self._is_superuser(conn):
                            self.exit_code = EXIT_NOT_SUPERUSER
                            self.request_stop()
                            return
                        checked_role = True
                    cursor = await conn.execute(DATABASES_QUERY)
                    names = [str(row[0]) for row in await cursor.fetchall()]
            except psycopg.Error as exc:
                if error_log.allow():
                    log_event(
                        logging.WARNING, f"cannot connect to PostgreSQL, retrying: {describe(exc)}"
                    )
                await self._sleep(backoff.next_delay())
                continue
            backoff.reset()
            self._forget_finished()
            for name in names:
                if name not in self._databases and await self._has_extension(name):
                    worker = DatabaseWorker(name, self.options, self._started_at)
                    self._databases[name] = worker
                    worker.start()
            await self._sleep(self.options.rescan_interval)

    async def _is_superuser(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        cursor = await conn.execute(IS_SUPERUSER_QUERY)
        row = await cursor.fetchone()
        if row is not None and row[0]:
            return True
        log_event(
            logging.ERROR,
            "pgnats-worker must connect as a superuser: it runs each callback as the role "
            "that subscribed it",
        )
        return False

    async def _has_extension(self, name: str) -> bool:
        try:
            async with await psycopg.AsyncConnection.connect(
                self._conninfo(name), autocommit=True
            ) as conn:
                cursor = await conn.execute(HAS_EXTENSION_QUERY)
                return await cursor.fetchone() is not None
        except psycopg.Error as exc:
            log_event(logging.DEBUG, f"cannot look into database: {describe(exc)}", database=name)
            return False

    def _forget_finished(self) -> None:
        for name, worker in list(self._databases.items()):
            if worker.task is not None and worker.task.done():
                del self._databases[name]

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    # -- stopping ------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        workers = list(self._databases.values())
        queued = sum(worker.queued for worker in workers)
        log_event(logging.INFO, f"stopping: no new messages; {queued} received messages to process")
        await asyncio.gather(*(worker.stop_receiving() for worker in workers))
        for worker in workers:
            worker.finish()
        finishing = asyncio.gather(*(worker.wait_dispatchers() for worker in workers))
        try:
            await asyncio.wait_for(asyncio.shield(finishing), self.options.shutdown_timeout)
        except TimeoutError:
            log_event(
                logging.WARNING,
                f"stopping: shutdown timeout ({self.options.shutdown_timeout}s) reached; "
                "cancelling the batches in flight",
            )
            await asyncio.gather(*(worker.abort() for worker in workers))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(finishing), ABORT_GRACE)
            for worker in workers:
                if worker.queued:
                    log_event(
                        logging.ERROR,
                        f"stopping: {worker.queued} received messages could be neither "
                        "processed nor recorded, and are lost",
                        database=worker.name,
                    )
        await asyncio.gather(*(worker.close() for worker in workers))
