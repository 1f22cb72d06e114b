"""nats-py on the test's side of the wire: subscribers and responders that the tests drive
synchronously, from an event loop running in a thread of their own."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

T = TypeVar("T")

DEFAULT_WAIT = 10.0


class Received:
    """The messages of one subscription, in arrival order."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Msg] = queue.Queue()

    def put(self, message: Msg) -> None:
        self._queue.put(message)

    def next(self, timeout: float = DEFAULT_WAIT) -> Msg:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s") from None

    def take(self, count: int, timeout: float = DEFAULT_WAIT) -> list[Msg]:
        deadline = time.monotonic() + timeout
        return [self.next(max(deadline - time.monotonic(), 0.001)) for _ in range(count)]

    def assert_empty(self, wait: float = 0.3) -> None:
        try:
            extra = self._queue.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {extra.subject}: {extra.data!r}")


class NatsSide:
    """nats-py clients for one test; every call waits for its result (bounded)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._clients: list[Client] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = DEFAULT_WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def connect(self, url: str, **options: Any) -> Client:
        """A nats-py client; ``options`` go to ``nats.connect`` (tls=..., user=...)."""
        client = self.run(nats.connect(url, connect_timeout=5, max_reconnect_attempts=0, **options))
        self._clients.append(client)
        return client

    def subscribe(self, url: str, subject: str, **options: Any) -> Received:
        """Messages on ``subject``, subscribed (and confirmed by the server) on return."""
        received = Received()
        client = self.connect(url, **options)

        async def handler(message: Msg) -> None:
            received.put(message)

        async def subscribe() -> None:
            await client.subscribe(subject, cb=handler)
            await client.flush()

        self.run(subscribe())
        return received

    def respond(
        self,
        url: str,
        subject: str,
        answer: Callable[[Msg], Awaitable[bytes | None]],
        **options: Any,
    ) -> None:
        """Answer every request on ``subject`` with ``await answer(msg)`` (None: no answer)."""
        client = self.connect(url, **options)

        async def handler(message: Msg) -> None:
            reply = await answer(message)
            if reply is not None:
                await message.respond(reply)

        async def subscribe() -> None:
            await client.subscribe(subject, cb=handler)
            await client.flush()

        self.run(subscribe())

    def close(self) -> None:
        async def close_all() -> None:
            for client in self._clients:
                if not client.is_closed:
                    await client.close()

        try:
            self.run(close_all())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()


async def echo(message: Msg) -> bytes:
    return message.data
