"""One database's connection to NATS and its subscriptions.

Every subscription joins a queue group of its own: the database's prefix (see
catalog.QUEUE_GROUP_QUERY) plus a digest of the subscribed subject. While a new connection
takes over from an old one (handover.py), each message reaches one of the two, never both,
and never neither. The subject is part of the name because NATS gives a message to only one
member of a queue group: one group for the whole database would split the messages of
overlapping subscriptions (ov.* and ov.a) between them.

nats-py reconnects by itself, forever (max_reconnect_attempts=-1), and sends the
subscriptions again after each reconnect. The first connection is retried too: nats.connect
keeps trying every ``reconnect_wait`` seconds until it succeeds or is cancelled (settings
changed, worker stopping). Reconnects after a loss back off exponentially up to
``reconnect_wait``.

The client runs in a thread of its own, with its own event loop. nats-py parses everything
it has read, and hands every message to its subscriptions, without giving the loop back;
on the worker's loop that held up the replies PostgreSQL sent to the dispatchers (a batch
then waited for its round trips behind thousands of messages being parsed), and halved the
throughput in bursts. Messages come over to the worker's loop in chunks
(:meth:`_hand_over`); the rest of this class is called from the worker's loop and runs its
NATS work in the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pgnats.config import ConnectSettings

from pgnats_worker.backoff import Backoff
from pgnats_worker.logs import RateLimit, log_event

# (subscribed subject, message subject, payload)
MessageHandler = Callable[[str, str, bytes], None]

FLUSH_TIMEOUT = 2
# Draining: unsubscribe, then a round trip, after which the server has sent everything it
# will send; what it sent is read and handed over before the connection closes.
DRAIN_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
# How often a probe (see receives_from) is published again while it has not arrived.
PROBE_RETRY = 0.05
# The last token of a probe's subject (_INBOX.<nuid>.pgnats-probe): a user's subscription
# to > or _INBOX.> also sees probes, and they are not messages for its callback.
PROBE_SUFFIX = ".pgnats-probe"

T = TypeVar("T")


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
        queue_group: str,
        wanted: set[str],
        reconnect_wait: float,
        on_message: MessageHandler,
        on_change: Callable[[], None],
    ) -> None:
        self.database = database
        self.settings = settings
        self.queue_group = queue_group
        self._reconnect_wait = reconnect_wait
        self._on_message = on_message
        self._on_change = on_change
        self._worker_loop = asyncio.get_running_loop()
        self._loop: asyncio.AbstractEventLoop | None = None  # the NATS thread's
        self._thread: threading.Thread | None = None
        self._client: Client | None = None  # once connected
        self._connecting_client: Client | None = None
        self._connecting: Any = None  # concurrent.futures.Future of the first connection
        self._subscriptions: dict[str, Subscription] = {}  # touched in the NATS thread only
        self._live: frozenset[str] = frozenset()  # a copy the worker's loop may read
        self._wanted = set(wanted)
        self._ready = asyncio.Event()  # the worker loop's: connected, everything subscribed
        self._probe: Subscription | None = None
        # The subject of a probe under way (see receives_from), in this link or the other
        # one, and whether the server refused it to this link.
        self._probe_subject: str | None = None
        self._probe_denied = False
        self._sync_lock = asyncio.Lock()  # in the NATS thread's loop
        self._inbox: list[tuple[str, str, bytes]] = []
        self._inbox_lock = threading.Lock()
        self._error_log = RateLimit(burst=3, period=30.0)
        self._policy = _ReconnectPolicy(maximum=max(reconnect_wait, 0.1))

    # -- state (read from the worker's loop) ----------------------------------------------
    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and client.is_connected

    @property
    def server(self) -> str | None:
        client = self._client
        url = client.connected_url if client is not None else None
        if url is None:
            return None
        return f"{url.scheme}://{url.hostname}:{url.port}"

    async def wait_ready(self) -> None:
        """Until the first connection is made and every wanted subject subscribed."""
        await self._ready.wait()

    @property
    def subscribed(self) -> list[str]:
        """The subjects with a live subscription (empty while disconnected)."""
        return sorted(self._live) if self.connected else []

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
                # Whatever nats-py still has running (a connect cut short) ends here.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"nats {self.database}", daemon=True)
        self._thread.start()
        ready.wait()
        assert self._loop is not None
        self._connecting = asyncio.run_coroutine_threadsafe(self._connect(), self._loop)

    async def _in_thread(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` in the NATS thread and wait for it from the worker's loop."""
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def _to_worker(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the worker's loop is closing
            self._worker_loop.call_soon_threadsafe(callback)

    async def _connect(self) -> None:
        client = self._connecting_client = Client()
        log_event(
            logging.INFO, f"connecting to NATS {self.settings.describe()}", database=self.database
        )
        await client.connect(
            **self.settings.nats_connect_kwargs(),
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
        await self._sync(self._wanted)
        self._to_worker(self._ready.set)
        self._to_worker(self._on_change)

    async def close(self) -> None:
        """Stop receiving: messages nats-py already read are still handed over (drain)."""
        if self._loop is None or self._thread is None:
            return
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        with contextlib.suppress(Exception):
            await self._in_thread(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, CLOSE_TIMEOUT * 2)
        self._hand_over()  # whatever the drain delivered last
        self._thread = None

    async def _close(self) -> None:
        async with self._sync_lock:  # no subscribe may slip in while draining
            client, self._client = self._client or self._connecting_client, None
            self._subscriptions.clear()
            self._live = frozenset()
        if client is None or client.is_closed:
            return
        try:
            if client.is_connected:
                await asyncio.wait_for(client.drain(), DRAIN_TIMEOUT)
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
        if self._loop is not None:
            await self._in_thread(self._sync(set(wanted)))

    async def _sync(self, wanted: set[str]) -> None:
        async with self._sync_lock:
            client = self._client
            if client is None or client.is_closed:
                return  # done once connected
            changed = False
            for subject in sorted(wanted - set(self._subscriptions)):
                try:
                    self._subscriptions[subject] = await client.subscribe(
                        subject,
                        queue=queue_for(self.queue_group, subject),
                        cb=self._handler(subject),
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
            for subject in sorted(set(self._subscriptions) - wanted):
                subscription = self._subscriptions.pop(subject)
                # The user removed it: messages for it have no callback left to go to.
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
                changed = True
            self._live = frozenset(self._subscriptions)
            if changed and client.is_connected:
                try:
                    await client.flush(timeout=FLUSH_TIMEOUT)
                except Exception as exc:
                    log_event(
                        logging.WARNING, f"NATS flush failed: {exc!r}", database=self.database
                    )

    # -- handover ---------------------------------------------------------------------
    async def receives_from(self, other: NatsLink, timeout: float) -> bool:
        """Whether a message published through ``other`` now reaches this link.

        A server takes a connection's SUBs in order, and the servers of a cluster pass
        them on to each other in order. So once a probe, subscribed after everything
        else, arrives from ``other``, the server behind ``other`` knows every queue
        subscription of this link, and ``other`` may unsubscribe without a gap.
        False when it does not arrive within ``timeout`` seconds, or either side may not
        use the probe's _INBOX subject.
        """
        arrived = asyncio.Event()
        self._probe_denied = other._probe_denied = False
        try:
            subject = await self._in_thread(self._subscribe_probe(arrived))
            if subject is None:
                return False
            other._probe_subject = subject
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while other.connected and not (self._probe_denied or other._probe_denied):
                await other._in_thread(other._publish_probe(subject))
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), min(PROBE_RETRY, remaining))
                    return True
            return False
        finally:
            for link in (self, other):
                link._probe_subject = None
            await self._in_thread(self._unsubscribe_probe())

    async def _subscribe_probe(self, arrived: asyncio.Event) -> str | None:
        """Subscribe a new inbox subject (after every subscription of a sync under way);
        its name, or None when not connected."""

        async def on_probe(msg: Msg) -> None:
            self._to_worker(arrived.set)

        async with self._sync_lock:
            client = self._client
            if client is None or not client.is_connected:
                return None
            subject = self._probe_subject = client.new_inbox() + PROBE_SUFFIX
            try:
                self._probe = await client.subscribe(subject, cb=on_probe)
            except Exception:
                return None
            return subject

    async def _publish_probe(self, subject: str) -> None:
        client = self._client
        if client is not None and client.is_connected:
            with contextlib.suppress(Exception):
                await client.publish(subject, b"")

    async def _unsubscribe_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(Exception):
                await probe.unsubscribe()

    def _is_probe_error(self, error: Exception) -> bool:
        """A permissions violation for the probe's subject (the server names it, lower
        case)."""
        subject = self._probe_subject
        return subject is not None and subject.lower() in str(error).lower()

    def _handler(self, subscribed: str) -> Callable[[Msg], Any]:
        async def handle(msg: Msg) -> None:
            if msg.subject.endswith(PROBE_SUFFIX) and msg.subject.startswith("_INBOX."):
                return
            with self._inbox_lock:
                self._inbox.append((subscribed, msg.subject, msg.data))
                first = len(self._inbox) == 1
            if first:  # the worker's loop takes everything waiting in one go
                self._to_worker(self._hand_over)

        return handle

    def _hand_over(self) -> None:
        """In the worker's loop: the messages received since the last hand-over."""
        with self._inbox_lock:
            messages, self._inbox = self._inbox, []
        on_message = self._on_message
        for subscribed, subject, payload in messages:
            on_message(subscribed, subject, payload)

    # -- nats-py callbacks (in the NATS thread) -------------------------------------------
    async def _on_error(self, error: Exception) -> None:
        if self._is_probe_error(error):  # not the user's business: the handover goes on
            self._probe_denied = True
            log_event(logging.DEBUG, f"NATS probe refused: {error!r}", database=self.database)
            return
        if self._error_log.allow():
            log_event(logging.WARNING, f"NATS error: {error!r}", database=self.database)

    async def _on_disconnected(self) -> None:
        if self._client is not None and not self._client.is_closed:
            log_event(
                logging.WARNING, "disconnected from NATS; reconnecting", database=self.database
            )
        self._to_worker(self._on_change)

    async def _on_reconnected(self) -> None:
        self._policy.backoff.reset()
        log_event(
            logging.INFO,
            f"reconnected to NATS {self.server}; subscriptions restored",
            database=self.database,
            subjects=len(self._live),
        )
        self._to_worker(self._on_change)

    async def _on_closed(self) -> None:
        log_event(logging.INFO, "NATS connection closed", database=self.database)


def queue_for(prefix: str, subject: str) -> str:
    """The queue group of one subscribed subject (wildcards are not allowed in the name)."""
    return f"{prefix}.{hashlib.sha256(subject.encode()).hexdigest()[:16]}"
