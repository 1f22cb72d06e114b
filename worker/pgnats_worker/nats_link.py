"""One database's connection to NATS and its subscriptions.

nats-py reconnects by itself, forever (max_reconnect_attempts=-1), and sends the
subscriptions again after each reconnect. The first connection is retried too: nats.connect
keeps trying every ``reconnect_wait`` seconds until it succeeds or is cancelled (settings
changed, worker stopping). Reconnects after a loss back off exponentially up to
``reconnect_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pgnats.config import ConnectSettings

from pgnats_worker.backoff import Backoff
from pgnats_worker.logs import RateLimit, log_event

# (subscribed subject, message subject, payload)
MessageHandler = Callable[[str, str, bytes], None]

FLUSH_TIMEOUT = 2
CLOSE_TIMEOUT = 2.0


class _ReconnectPolicy:
    """Round robin over the servers, with exponential backoff between attempts."""

    def __init__(self, maximum: float) -> None:
        self.backoff = Backoff(initial=0.05, maximum=maximum)
        self._turn = 0

    def __call__(self, servers: list[Server], info: dict[str, Any]) -> tuple[Server, float]:
        server = servers[self._turn % len(servers)]
        self._turn += 1
        return server, self.backoff.next_delay()


class NatsLink:
    def __init__(
        self,
        *,
        database: str,
        settings: ConnectSettings,
        reconnect_wait: float,
        on_message: MessageHandler,
        on_change: Callable[[], None],
    ) -> None:
        self.database = database
        self.settings = settings
        self._reconnect_wait = reconnect_wait
        self._on_message = on_message
        self._on_change = on_change
        self._client: Client | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._subscriptions: dict[str, Subscription] = {}
        self._wanted: set[str] = set()
        self._sync_lock = asyncio.Lock()
        self._error_log = RateLimit(burst=3, period=30.0)
        self._policy = _ReconnectPolicy(maximum=max(reconnect_wait, 0.1))

    # -- state --------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    @property
    def server(self) -> str | None:
        client = self._client
        if client is None or client.connected_url is None:
            return None
        url = client.connected_url
        return f"{url.scheme}://{url.hostname}:{url.port}"

    @property
    def subscribed(self) -> list[str]:
        """The subjects with a live subscription (empty while disconnected)."""
        return sorted(self._subscriptions) if self.connected else []

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._connect_task = asyncio.create_task(
            self._connect(), name=f"nats connect {self.database}"
        )

    async def _connect(self) -> None:
        client = Client()
        kwargs = self.settings.nats_connect_kwargs()
        log_event(
            logging.INFO, f"connecting to NATS {self.settings.describe()}", database=self.database
        )
        await client.connect(
            **kwargs,
            name=f"pgnats-worker {self.database}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self._reconnect_wait,  # type: ignore[arg-type]  # float works
            reconnect_to_server_handler=self._policy,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        self._client = client
        log_event(logging.INFO, f"connected to NATS {self.server}", database=self.database)
        await self.sync(self._wanted)
        self._on_change()

    async def close(self) -> None:
        """Stop receiving: messages nats-py already read are still handed over (drain)."""
        task, self._connect_task = self._connect_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client, self._client = self._client, None
        self._subscriptions.clear()
        if client is None or client.is_closed:
            return
        try:
            if client.is_connected:
                await asyncio.wait_for(client.drain(), CLOSE_TIMEOUT)
        except Exception as exc:  # a drain cut short still leaves us closing the client
            log_event(logging.DEBUG, f"NATS drain: {exc!r}", database=self.database)
        finally:
            if not client.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)

    # -- subscriptions ------------------------------------------------------------------
    async def sync(self, wanted: set[str]) -> None:
        """Subscribe to the subjects of ``wanted`` not yet subscribed, unsubscribe the others,
        and make sure the server has seen it (a PING round trip)."""
        self._wanted = set(wanted)
        async with self._sync_lock:
            client = self._client
            if client is None or client.is_closed:
                return  # done once connected
            changed = False
            for subject in sorted(self._wanted - set(self._subscriptions)):
                try:
                    self._subscriptions[subject] = await client.subscribe(
                        subject, cb=self._handler(subject)
                    )
                except Exception as exc:  # a row written around the checks, say
                    log_event(
                        logging.ERROR,
                        f"cannot subscribe: {exc!r}",
                        database=self.database,
                        subject=subject,
                    )
                    continue
                changed = True
            for subject in sorted(set(self._subscriptions) - self._wanted):
                subscription = self._subscriptions.pop(subject)
                # The user removed it: messages for it have no callback left to go to.
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
                changed = True
            if changed and client.is_connected:
                try:
                    await client.flush(timeout=FLUSH_TIMEOUT)
                except Exception as exc:
                    log_event(
                        logging.WARNING, f"NATS flush failed: {exc!r}", database=self.database
                    )

    def _handler(self, subscribed: str) -> Callable[[Msg], Any]:
        on_message = self._on_message

        async def handle(msg: Msg) -> None:
            on_message(subscribed, msg.subject, msg.data)

        return handle

    # -- nats-py callbacks --------------------------------------------------------------
    async def _on_error(self, error: Exception) -> None:
        if self._error_log.allow():
            log_event(logging.WARNING, f"NATS error: {error!r}", database=self.database)

    async def _on_disconnected(self) -> None:
        if self._client is not None and not self._client.is_closed:
            log_event(
                logging.WARNING, "disconnected from NATS; reconnecting", database=self.database
            )
        self._on_change()

    async def _on_reconnected(self) -> None:
        self._policy.backoff.reset()
        log_event(
            logging.INFO,
            f"reconnected to NATS {self.server}; subscriptions restored",
            database=self.database,
            subjects=len(self._subscriptions),
        )
        self._on_change()

    async def _on_closed(self) -> None:
        log_event(logging.INFO, "NATS connection closed", database=self.database)
