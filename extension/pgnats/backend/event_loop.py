"""Running asyncio code (nats-py) inside a PostgreSQL backend.

PostgreSQL runs Python only while a SQL function is executing, and never interrupts it. So
coroutines are run by :func:`run_sliced`: the loop runs in slices of
``interrupts.CHECK_INTERVAL`` with :func:`check_for_interrupts` between them, which lets a
pending cancel or statement_timeout end the call (the coroutine is cancelled first).

:class:`BackendEventLoop` is the loop for a session. It differs from asyncio's in one way:
nats-py hands each chunk of an object it downloads to ``run_in_executor``, which would start
threads inside the backend; writes to an :class:`InlineSink` run inline instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar

from pgnats.backend.interrupts import CHECK_INTERVAL, check_for_interrupts

T = TypeVar("T")

# How long a cancelled coroutine may take to unwind before the call gives up waiting for it.
CANCEL_GRACE = 0.5


class InlineSink:
    """Collects downloaded bytes; its ``write`` runs inline in :class:`BackendEventLoop`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.last_write = time.monotonic()
        self.writes = 0

    def write(self, data: bytes) -> int:
        self._buffer += data
        self.last_write = time.monotonic()
        self.writes += 1
        return len(data)

    def getvalue(self) -> bytes:
        return bytes(self._buffer)


class BackendEventLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, but writes to an :class:`InlineSink` do not go to a thread pool (other
    executor work, such as resolving a host name, still does)."""

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., Any], *args: Any
    ) -> asyncio.Future[Any]:
        if executor is None and isinstance(getattr(func, "__self__", None), InlineSink):
            future: asyncio.Future[Any] = self.create_future()
            try:
                future.set_result(func(*args))
            except Exception as exc:
                future.set_exception(exc)
            return future
        return super().run_in_executor(executor, func, *args)


def run_sliced(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, T],
    *,
    timeout: float | None,
    give_up: Callable[[], BaseException | None] | None = None,
) -> T:
    """Run ``coro`` to completion on ``loop`` and return its result.

    Raises ``TimeoutError`` once ``timeout`` seconds have passed (``None``: no limit of our
    own), whatever :func:`check_for_interrupts` raises when the statement is cancelled, and
    the exception ``give_up()`` returns when it returns one (asked between slices). In each
    case the coroutine is cancelled before this returns.
    """
    task = loop.create_task(coro)
    deadline = None if timeout is None else time.monotonic() + timeout
    # Each slice is run_forever() until the task is done or the slice is over (cheaper than
    # run_until_complete(asyncio.wait(...)), which makes two more tasks per slice).
    slicing = True

    def stop_when_done(_task: asyncio.Future[T]) -> None:
        if slicing:
            loop.stop()

    task.add_done_callback(stop_when_done)
    try:
        while True:
            piece = CHECK_INTERVAL
            if deadline is not None:
                piece = min(piece, max(0.0, deadline - time.monotonic()))
            timer = loop.call_later(piece, loop.stop)
            try:
                loop.run_forever()
            finally:
                timer.cancel()
            if task.done():
                return task.result()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no result within {timeout:.3f} s")
            reason = give_up() if give_up is not None else None
            if reason is not None:
                raise reason
            check_for_interrupts()
    finally:
        slicing = False  # a done callback still queued must not stop a later run
        if not task.done():
            task.cancel()
            settle(loop, task, CANCEL_GRACE)


def settle(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any], timeout: float) -> None:
    """Give ``task`` up to ``timeout`` seconds to finish, without checking for interrupts
    (used while an error, possibly a cancel, is already on its way out)."""
    if not task.done():
        loop.run_until_complete(asyncio.wait((task,), timeout=timeout))
    if task.done() and not task.cancelled():
        task.exception()  # mark it retrieved: asyncio would log it otherwise
