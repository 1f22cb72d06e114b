"""One connection to a NATS server, driven synchronously by the calls that use it.

Inside a backend nothing runs between SQL calls, so this connection has no reader thread:
every call first reads what the server sent meanwhile, without blocking (answering PINGs,
noticing that the server closed the connection), then sends its frame. The socket is always
non-blocking; every wait is a ``poll`` cut into slices of ``check_interval`` seconds with
``check_interrupts()`` between them, so that a cancel request ends it promptly, and every
wait has a deadline.

After any error that may have left the stream out of step (a frame sent in part, a
protocol error, an error reported by the server) the connection closes itself: its owner
makes a new one, and nothing half-sent is ever reused.

Plain Python: no ``plpy`` here, the interrupt check is passed in. Connections are made by
:func:`pgnats.backend.nats_connect.open_connection`.
"""

from __future__ import annotations

import itertools
import secrets
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from pgnats.backend import nats_protocol as proto
from pgnats.config import ConnectSettings, Endpoint
from pgnats.errors import (
    ConnectionLost,
    NatsTimeout,
    NoResponders,
    PayloadTooLarge,
    PgnatsError,
)

InterruptCheck = Callable[[], None]

READ_SIZE = 256 * 1024
DEFAULT_MAX_PAYLOAD = 1024 * 1024
INBOX_SID = b"1"

WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
READ_EVENTS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
WRITE_EVENTS = select.POLLOUT | select.POLLERR | select.POLLHUP


class Lost(ConnectionLost):
    """The connection broke; ``reason`` says how, without the server's URL."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"connection to NATS at {url} lost: {reason}")
        self.reason = reason


class ServerError(PgnatsError):
    """The server answered with ``-ERR``."""

    def __init__(self, server_message: str, **kwargs: Any) -> None:
        super().__init__(f"the NATS server reported an error: {server_message}", **kwargs)
        self.server_message = server_message


def as_ms(seconds: float) -> int:
    return round(seconds * 1000)


class NatsConnection:
    """A connected, handshaken NATS connection (made by ``nats_connect.open_connection``)."""

    def __init__(
        self,
        sock: socket.socket,
        endpoint: Endpoint,
        settings: ConnectSettings,
        info: dict[str, Any],
        parser: proto.Parser,
        check_interrupts: InterruptCheck,
        check_interval: float,
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.info = info
        self.max_payload = _max_payload(info)
        self.send_timeout = settings.request_timeout_ms / 1000
        self.closed = False
        self._sock = sock
        self._parser = parser
        self._check_interrupts = check_interrupts
        self._check_interval = check_interval
        self._readable = select.poll()
        self._readable.register(sock.fileno(), READ_EVENTS)
        self._writable = select.poll()
        self._writable.register(sock.fileno(), WRITE_EVENTS)
        self._owed_pongs = 0
        self._pongs = 0
        # Requests: one wildcard subscription, made with the first request; each request
        # waits for its own reply subject, so a late reply to an earlier one is dropped.
        self._inbox = b"_INBOX." + secrets.token_hex(11).encode()
        self._inbox_subscribed = False
        self._request_numbers = itertools.count(1)
        self._awaited_reply: bytes | None = None
        self._reply: proto.Msg | None = None

    # -- opening ----------------------------------------------------------------------
    # -- the operations -----------------------------------------------------------------
    def is_quiet(self) -> bool:
        """True when the connection is open and the server sent nothing since the last call:
        it can be used as it is (one ``poll`` system call)."""
        return not self.closed and not self._readable.poll(0)

    def read_pending(self) -> None:
        """Read what the server sent since the last call, without waiting.

        Raises :class:`ConnectionLost` when the server closed the connection (restarted, or
        dropped it as idle), and :class:`ServerError` for an error it reported meanwhile.
        """
        while self._readable.poll(0) and self._read_available():
            pass

    def publish(
        self,
        subject: bytes,
        reply: bytes | None,
        header_block: bytes | None,
        payload: bytes,
    ) -> None:
        """Send one message; waits only when the socket buffer is full (up to the settings'
        request_timeout)."""
        if header_block is None:
            if len(payload) > self.max_payload:
                self._check_size(len(payload))
            self._send(proto.pub_frame(subject, reply, payload), self.send_timeout)
        else:
            self._check_headers_supported()
            self._check_size(len(header_block) + len(payload))
            self._send(proto.hpub_frame(subject, reply, header_block, payload), self.send_timeout)

    def request(self, subject: bytes, payload: bytes, timeout: float) -> bytes:
        """Publish with a reply subject of our own and wait up to ``timeout`` s for the reply."""
        self._check_size(len(payload))
        deadline = time.monotonic() + timeout
        reply = b"%b.%d" % (self._inbox, next(self._request_numbers))
        frame = proto.pub_frame(subject, reply, payload)
        if not self._inbox_subscribed:
            frame = proto.sub_frame(self._inbox + b".*", INBOX_SID) + frame
        self._awaited_reply = reply
        self._reply = None
        try:
            self._send(frame, timeout)
            self._inbox_subscribed = True
            while self._reply is None:
                if not self._wait(self._readable, deadline):
                    raise NatsTimeout(
                        f"no reply to the request on {subject.decode()!r} "
                        f"within {as_ms(timeout)} ms"
                    )
                self._read_available()
                self._pay_pongs(deadline)
            message = self._reply
        finally:
            self._awaited_reply = None
            self._reply = None
        return self._reply_payload(subject, message)

    def ping(self, timeout: float, before: bytes = b"") -> None:
        """A round trip to the server (after sending ``before``): proves the connection
        works and brings any INFO the server sent meanwhile."""
        deadline = time.monotonic() + timeout
        expected = self._pongs + 1
        self._send(before + proto.PING, timeout)
        while self._pongs < expected:
            if not self._wait(self._readable, deadline):
                self.close()
                raise NatsTimeout(
                    f"the NATS server did not answer a PING within {as_ms(timeout)} ms"
                )
            self._read_available()
            self._pay_pongs(deadline)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sock.close()

    # -- helpers ------------------------------------------------------------------------
    def _check_size(self, size: int) -> None:
        if size > self.max_payload:
            raise PayloadTooLarge(
                f"message of {size} bytes is larger than the NATS server's max_payload "
                f"({self.max_payload} bytes)",
                hint="the payload and the headers count together",
            )

    def _check_headers_supported(self) -> None:
        if not self.info.get("headers"):
            raise PgnatsError(
                f"the NATS server at {self.endpoint.url} does not support headers",
                sqlstate="0A000",
            )

    @staticmethod
    def _reply_payload(subject: bytes, message: proto.Msg) -> bytes:
        if message.header_block is not None and not message.payload:
            status = proto.header_status(message.header_block)
            if status.code == 503:
                raise NoResponders(
                    f"no responders are subscribed to {subject.decode()!r}",
                    hint="nothing listens on that subject, so the request cannot be answered",
                )
            if status.code is not None and status.code >= 400:
                raise PgnatsError(
                    f"the request on {subject.decode()!r} failed with NATS status "
                    f"{status.code} {status.description}".rstrip()
                )
        return message.payload

    def _lost(self, reason: str) -> Lost:
        self.close()
        return Lost(self.endpoint.url, reason)

    def _read_available(self) -> bool:
        """Read once what the socket has (and what TLS has decrypted already) and handle
        it; False when there was nothing to read after all (part of a TLS record)."""
        if self.closed:
            raise self._lost("it was closed after an earlier error")
        chunks: list[bytes] = []
        try:
            chunks.append(self._sock.recv(READ_SIZE))
            if isinstance(self._sock, ssl.SSLSocket):
                while chunks[-1] and self._sock.pending():
                    chunks.append(self._sock.recv(READ_SIZE))
        except WOULD_BLOCK:
            if not chunks:
                return False
        except OSError as exc:
            raise self._lost(exc.strerror or str(exc)) from None
        if not chunks[0]:
            raise self._lost("the server closed the connection")
        data = b"".join(chunks)
        try:
            events = self._parser.feed(data)
        except proto.ProtocolError as exc:
            self.close()
            raise PgnatsError(f"NATS protocol error from {self.endpoint.url}: {exc}") from None
        for event in events:
            self._handle(event)
        return True

    def _handle(self, event: proto.Event) -> None:
        if isinstance(event, proto.Msg):
            if event.sid == INBOX_SID and event.subject == self._awaited_reply:
                self._reply = event
            # Anything else is a late reply to a request that already gave up: dropped.
        elif isinstance(event, proto.Ping):
            self._owed_pongs += 1
        elif isinstance(event, proto.Pong):
            self._pongs += 1
        elif isinstance(event, proto.Info):
            self.info.update(event.fields)
            self.max_payload = _max_payload(self.info)
        elif isinstance(event, proto.Err):
            if "stale connection" in event.message.lower():
                raise self._lost("the server dropped it as idle (Stale Connection)")
            self.close()
            raise ServerError(
                event.message,
                detail="A publish does not wait for the server, so this error may be about "
                "an earlier message of this session.",
            )

    def _pay_pongs(self, deadline: float) -> None:
        if self._owed_pongs:
            self._send(b"", max(deadline - time.monotonic(), self._check_interval))

    def _send(self, data: bytes, timeout: float) -> None:
        """Send all of ``data`` (plus any PONG we owe) within ``timeout`` seconds."""
        if self._owed_pongs or self.closed:
            data = self._before_send(data)
        try:
            sent = self._sock.send(data)
        except WOULD_BLOCK:
            sent = 0
        except OSError as exc:
            raise self._lost(exc.strerror or str(exc)) from None
        if sent < len(data):
            self._send_rest(memoryview(data)[sent:], time.monotonic() + timeout)

    def _before_send(self, data: bytes) -> bytes:
        if self.closed:
            raise self._lost("it was closed after an earlier error")
        pongs = proto.PONG * self._owed_pongs
        self._owed_pongs = 0
        return pongs + data

    def _send_rest(self, rest: memoryview, deadline: float) -> None:
        try:
            while rest:
                if not self._wait(self._writable, deadline):
                    raise self._lost("timed out sending to the server")
                try:
                    rest = rest[self._sock.send(rest) :]
                except WOULD_BLOCK:
                    continue
        except OSError as exc:
            raise self._lost(exc.strerror or str(exc)) from None
        except BaseException:
            # Interrupted part way through a frame: the stream is unusable now.
            self.close()
            raise

    def _wait(self, poller: select.poll, deadline: float) -> bool:
        return wait_for(poller, deadline, self._check_interrupts, self._check_interval)


def _max_payload(info: dict[str, Any]) -> int:
    return int(info.get("max_payload") or DEFAULT_MAX_PAYLOAD)


def wait_for(
    poller: select.poll, deadline: float, check_interrupts: InterruptCheck, interval: float
) -> bool:
    """Wait until ``poller`` has an event (True) or ``deadline`` passes (False), checking
    for interrupts every ``interval`` seconds."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if poller.poll(min(remaining, interval) * 1000):
            return True
        check_interrupts()
