"""The session's nats-py client for JetStream, and how every JetStream call is run.

nats-py does its work (reading, answering PINGs, flushing) only while the event loop runs,
that is, only during a SQL call. Between calls the connection can go stale, the server can
restart, and settings can change. So, for every call:

1. the loop runs a few steps, which lets the client read what arrived while it was idle (an
   EOF, a stale-connection error); after more than :data:`IDLE_PING_AFTER` idle seconds a
   PING round trip also proves the path to the server is alive;
2. a client that is not connected, or was made from settings that have changed since, is
   replaced by a new one (nothing had been sent on it, so nothing is lost);
3. the call runs in slices that let statement_timeout and pg_cancel_backend end it;
4. after any failure that is not the server's own answer, the client is discarded without
   sending whatever it still has buffered, so a failed call can never publish later.

Clients never reconnect in the background (nats-py would replay its buffer on reconnect),
and a connect tries the configured servers in turn, giving each ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats.errors
import plpy
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from pgnats.backend.event_loop import BackendEventLoop, run_sliced, settle
from pgnats.backend.jetstream_errors import Situation, keeps_connection, translate
from pgnats.backend.session import current_settings, register_reset
from pgnats.config import ConnectSettings
from pgnats.errors import ConnectFailed

T = TypeVar("T")

# A connection idle for longer than this is PINGed before use (a half-open TCP connection,
# e.g. to a host that vanished, shows no EOF; without the PING a publish would time out).
IDLE_PING_AFTER = 1.0
# nats-py's own PINGs are off: between SQL calls nobody would read the PONGs, and nats-py
# would declare the connection stale in the middle of a later call. The check above replaces
# them; the server's PINGs are answered whenever the loop runs.
CLIENT_PING_INTERVAL = 365 * 24 * 3600
# Loop steps that let the reader task see what arrived while the session was idle.
WAKE_STEPS = 3
# How long a discarded client may take to close (its socket is already aborted).
DISCARD_GRACE = 0.2


# Errors PostgreSQL raised (check_for_interrupts raises plpy.SPIError, which is not a
# plpy.Error): they pass through unchanged, so a cancel keeps its SQLSTATE 57014.
POSTGRES_ERRORS = (plpy.Error, plpy.SPIError)


class StaleConnection(Exception):
    """The cached client turned out to be unusable before anything was sent on it."""


class _ToDebug1(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # logging must never raise into nats-py
            plpy.debug(f"pgnats: {record.name}: {record.getMessage()}")


def _quiet_library_logging() -> None:
    """nats-py and asyncio log through ``logging``, whose last-resort handler writes to the
    server log; send their records to DEBUG1 instead (our errors already say what failed)."""
    for name in ("nats", "asyncio"):
        logger = logging.getLogger(name)
        logger.handlers = [_ToDebug1()]
        logger.propagate = False


@dataclass
class Connection:
    """One connected nats-py client plus what this session learned while using it."""

    nc: NatsClient
    js: JetStreamContext
    settings: ConnectSettings
    last_used: float = field(default_factory=time.monotonic)
    # Buckets and stores known to exist, so that a put is not a lookup + put every time.
    key_values: dict[str, KeyValue] = field(default_factory=dict)
    object_stores: dict[str, ObjectStore] = field(default_factory=dict)

    @property
    def jetstream_enabled(self) -> bool:
        """What the server's INFO says (servers without JetStream leave the field out)."""
        info = getattr(self.nc, "_server_info", None) or {}
        return bool(info.get("jetstream", False))

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)

    @property
    def request_timeout(self) -> float:
        return self.settings.request_timeout_ms / 1000


class JetStreamSession:
    """The session's event loop and (at most one) connection."""

    def __init__(self) -> None:
        self._loop: BackendEventLoop | None = None
        self._connection: Connection | None = None
        self._async_errors: list[str] = []

    @property
    def loop(self) -> BackendEventLoop:
        if self._loop is None:
            _quiet_library_logging()
            self._loop = BackendEventLoop()
            self._loop.set_exception_handler(lambda _loop, _context: None)
        return self._loop

    def situation(self, action: str, *, may_have_happened: bool = False) -> Situation:
        """What an error message needs to know about the current connection."""
        settings = self._connection.settings if self._connection else current_settings()
        return Situation(
            action=action,
            server=settings.describe(),
            timeout_ms=settings.request_timeout_ms,
            jetstream_enabled=self._connection.jetstream_enabled if self._connection else None,
            max_payload=self._connection.max_payload if self._connection else None,
            may_have_happened=may_have_happened,
        )

    def run(
        self,
        action: str,
        operation: Callable[[Connection], Awaitable[T]],
        *,
        may_have_happened: bool = False,
    ) -> T:
        """Run ``operation`` on a checked connection; errors come out as pgnats errors.

        nats-py bounds each request by the request_timeout setting; a statement_timeout
        bounds the call as a whole. ``may_have_happened`` says the operation writes, so a
        timeout or lost connection is reported as "may or may not have been stored".
        """
        settings = current_settings()
        connection = self._connection
        if connection is not None and connection.settings != settings:
            self.discard()
            connection = None
        try:
            if connection is None:
                connection = self._connect(settings)
                return self._run_on(connection, operation(connection))
            try:
                return self._run_on(connection, self._checked(connection, operation))
            except StaleConnection:
                self.discard()
                connection = self._connect(settings)
                return self._run_on(connection, operation(connection))
        except POSTGRES_ERRORS:
            raise  # a cancel or statement_timeout from check_for_interrupts: keep its SQLSTATE
        except Exception as exc:
            raise translate(
                exc, self.situation(action, may_have_happened=may_have_happened)
            ) from None

    def _run_on(self, connection: Connection, coro: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coro

        def connection_closed() -> BaseException | None:
            # nats-py leaves a request waiting for its timeout when the connection closes
            # under it (a server crash, say): fail the call now instead.
            return nats.errors.ConnectionClosedError() if connection.nc.is_closed else None

        try:
            result = run_sliced(self.loop, wrapped(), timeout=None, give_up=connection_closed)
        except BaseException as exc:
            if not keeps_connection(exc):
                self.discard()
            raise
        connection.last_used = time.monotonic()
        return result

    async def _checked(
        self, connection: Connection, operation: Callable[[Connection], Awaitable[T]]
    ) -> T:
        for _ in range(WAKE_STEPS):
            await asyncio.sleep(0)
        if not connection.nc.is_connected:
            raise StaleConnection
        if time.monotonic() - connection.last_used > IDLE_PING_AFTER:
            try:
                # nats-py annotates the timeout as int; it is used as seconds, fractions work.
                flush_timeout: Any = connection.settings.connect_timeout_ms / 1000
                await connection.nc.flush(timeout=flush_timeout)
            except Exception:
                raise StaleConnection from None
        return await operation(connection)

    def _connect(self, settings: ConnectSettings) -> Connection:
        """Connect to the first server that accepts, in the order configured."""
        failures: list[str] = []
        timeout = settings.connect_timeout_ms / 1000
        for url in settings.servers:
            client = NatsClient()
            self._async_errors = []
            try:
                run_sliced(
                    self.loop,
                    client.connect(**self._connect_kwargs(settings, url)),
                    timeout=timeout,
                )
            except POSTGRES_ERRORS:
                self._abandon(client)
                raise
            except Exception as exc:
                self._abandon(client)
                failures.append(f"{url}: {self._connect_error_text(exc, settings)}")
                continue
            connection = Connection(
                client, client.jetstream(timeout=settings.request_timeout_ms / 1000), settings
            )
            self._connection = connection
            return connection
        raise ConnectFailed(
            "cannot connect to NATS: " + "; ".join(failures),
            hint="check the pgnats_fdw server's nats_url (or host and port), and that "
            "nats-server is running",
        )

    def _connect_kwargs(self, settings: ConnectSettings, url: str) -> dict[str, Any]:
        async def on_error(exc: Exception) -> None:
            self._async_errors = [*self._async_errors[-9:], str(exc) or type(exc).__name__]

        kwargs = settings.nats_connect_kwargs()
        kwargs.update(
            servers=[url],
            name=f"pgnats backend {os.getpid()}",
            allow_reconnect=False,
            # Give up on the server after its second failed attempt (0 would mean never); the
            # attempts are back to back, and run_sliced stops them at connect_timeout.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            ping_interval=CLIENT_PING_INTERVAL,
            error_cb=on_error,
        )
        return kwargs

    def _connect_error_text(self, exc: BaseException, settings: ConnectSettings) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {settings.connect_timeout_ms} ms (connect_timeout)"
        if isinstance(exc, nats.errors.NoServersError) and self._async_errors:
            # nats-py reports why each attempt failed to the error callback only.
            text = self._async_errors[-1]
        else:
            text = str(exc) or type(exc).__name__
        if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in text:
            return "connection refused"
        return text

    def discard(self) -> None:
        """Drop the connection without sending anything it still has buffered."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._abandon(connection.nc)

    def _abandon(self, client: NatsClient) -> None:
        # nats-py's close() flushes its buffer first, and asyncio's transport.close() sends
        # what it holds: empty nats-py's buffer and abort() the socket, then close().
        client._pending = []
        client._pending_data_size = 0
        transport = getattr(client, "_transport", None)
        writer = getattr(transport, "_io_writer", None)
        socket_transport = getattr(writer, "transport", None)
        if socket_transport is not None:
            socket_transport.abort()
        if self._loop is None:
            return
        with contextlib.suppress(Exception):  # the client is gone either way
            settle(self.loop, self.loop.create_task(client.close()), DISCARD_GRACE)


_session: JetStreamSession | None = None


def jetstream_session() -> JetStreamSession:
    """The session's JetStreamSession (made on first use; closed by pgnats_reload_conf_force)."""
    global _session
    if _session is None:
        _session = JetStreamSession()
        register_reset(_session.discard)
    return _session
