"""Replacing a database's NATS connection without a gap (make-before-break).

Core NATS keeps no messages: what is published while nobody subscribes is gone. So when
the settings change, or pgnats_reload_conf_force() asks for a new connection, the worker
does not close its connection and then open another. It opens the new one beside the old,
subscribes everything there, makes sure that the servers behind the old connection know
the new subscriptions (a probe published through the old connection reaches the new one),
and only then drains the old one: it unsubscribes, and hands over what the server had
already sent it. Both connections subscribe in the database's queue group, so while both
are subscribed each message reaches one of them, never both.

Until the new connection is ready, the old one goes on receiving; a newer reload meanwhile
replaces the connection still being made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from pgnats.config import ConnectSettings

from pgnats_worker.logs import log_event
from pgnats_worker.nats_link import MessageHandler, NatsLink

# How long the probe may take before the old connection is let go anyway: its server does
# not reach the new one (the settings moved to another NATS), or may not publish to
# _INBOX subjects.
PROBE_TIMEOUT = 2.0


class NatsLinks:
    """The NATS connection serving a database, and the one being made to take over."""

    def __init__(
        self,
        *,
        database: str,
        reconnect_wait: float,
        on_message: MessageHandler,
        on_change: Callable[[], None],
    ) -> None:
        self.database = database
        self._reconnect_wait = reconnect_wait
        self._on_message = on_message
        self._on_change = on_change
        self.current: NatsLink | None = None
        self._next: NatsLink | None = None
        self._handover: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._wanted: set[str] = set()

    def wants(self, settings: ConnectSettings, queue_group: str) -> bool:
        """Whether the newest connection was made with other settings (or there is none)."""
        newest = self._next or self.current
        return newest is None or newest.settings != settings or newest.queue_group != queue_group

    async def connect(self, settings: ConnectSettings, queue_group: str) -> None:
        """Make a connection with ``settings``; it takes over from the current one (if any)
        once it receives everything."""
        link = NatsLink(
            database=self.database,
            settings=settings,
            queue_group=queue_group,
            wanted=self._wanted,
            reconnect_wait=self._reconnect_wait,
            on_message=self._on_message,
            on_change=self._on_change,
        )
        link.start()
        if self.current is None:
            self.current = link
            return
        if self._next is not None:  # superseded before it took over
            await self._cancel_handover()
            self._close_later(self._next)
        self._next = link
        self._handover = asyncio.create_task(
            self._take_over(link), name=f"NATS handover {self.database}"
        )

    async def sync(self, wanted: set[str]) -> None:
        """Subscribe every connection to ``wanted`` (and unsubscribe the rest)."""
        self._wanted = set(wanted)
        links = [link for link in (self.current, self._next) if link is not None]
        await asyncio.gather(*(link.sync(self._wanted) for link in links))

    async def close(self) -> None:
        """Drain and close every connection (messages already received are handed over)."""
        await self._cancel_handover()
        for link in (self.current, self._next):
            if link is not None:
                self._close_later(link)
        self.current = self._next = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _take_over(self, link: NatsLink) -> None:
        await link.wait_ready()
        old = self.current
        if old is not None and old.connected and link.connected:
            try:
                reached = await link.receives_from(old, PROBE_TIMEOUT)
            except Exception as exc:  # a connection closing under the probe
                log_event(logging.DEBUG, f"NATS probe failed: {exc!r}", database=self.database)
                reached = False
            if not reached:
                log_event(
                    logging.INFO,
                    f"a probe published through the previous NATS connection ({old.server}) "
                    "did not reach the new one (another NATS system, or no permission for "
                    "_INBOX subjects); closing it anyway",
                    database=self.database,
                )
        self.current, self._next, self._handover = link, None, None
        log_event(
            logging.INFO,
            f"now receiving through the new NATS connection ({link.server}); "
            "draining the previous one",
            database=self.database,
        )
        self._on_change()
        if old is not None:
            self._close_later(old)

    async def _cancel_handover(self) -> None:
        """Stop a handover under way; the probe it may be running is cleaned up first."""
        task, self._handover = self._handover, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _close_later(self, link: NatsLink) -> None:
        task = asyncio.create_task(link.close(), name=f"NATS close {self.database}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if (exc := task.exception()) is not None:
            logging.getLogger(__name__).debug("closing a NATS connection failed: %r", exc)
