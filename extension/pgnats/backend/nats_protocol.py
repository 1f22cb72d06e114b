"""The NATS core protocol's wire format: frames we send, and a parser for what servers send.

Plain Python (no sockets, no ``plpy``): :mod:`pgnats.backend.nats_connection` does the I/O.
Reference: https://docs.nats.io/reference/reference-protocols/nats-protocol
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CRLF = b"\r\n"
PING = b"PING\r\n"
PONG = b"PONG\r\n"

# The server's default max_control_line is 4096; a line longer than this without CRLF
# means we are out of step with the server.
MAX_CONTROL_LINE = 64 * 1024

HEADER_VERSION_LINE = b"NATS/1.0"


class ProtocolError(Exception):
    """The server sent something that is not the NATS protocol."""


@dataclass(frozen=True)
class Info:
    fields: dict[str, Any]


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Ok:
    pass


@dataclass(frozen=True)
class Err:
    message: str


@dataclass(frozen=True)
class Msg:
    subject: bytes
    sid: bytes
    reply: bytes | None
    header_block: bytes | None
    payload: bytes


Event = Info | Ping | Pong | Ok | Err | Msg


def pub_frame(subject: bytes, reply: bytes | None, payload: bytes) -> bytes:
    if reply is None:
        return b"PUB %b %d\r\n%b\r\n" % (subject, len(payload), payload)
    return b"PUB %b %b %d\r\n%b\r\n" % (subject, reply, len(payload), payload)


def hpub_frame(subject: bytes, reply: bytes | None, header_block: bytes, payload: bytes) -> bytes:
    sizes = b"%d %d" % (len(header_block), len(header_block) + len(payload))
    target = subject if reply is None else subject + b" " + reply
    return b"HPUB %b %b\r\n%b%b\r\n" % (target, sizes, header_block, payload)


def sub_frame(subject: bytes, sid: bytes) -> bytes:
    return b"SUB %b %b\r\n" % (subject, sid)


def connect_frame(options: dict[str, Any]) -> bytes:
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + CRLF


@dataclass(frozen=True)
class Status:
    """The status line of a header block (``NATS/1.0 503 No Responders``), if it has one."""

    code: int | None
    description: str


def header_status(header_block: bytes) -> Status:
    first_line = header_block.split(CRLF, 1)[0]
    rest = first_line[len(HEADER_VERSION_LINE) :].strip()
    code_text, _, description = rest.partition(b" ")
    code = int(code_text) if code_text.isdigit() else None
    return Status(code, description.decode("utf-8", "replace").strip())


class Parser:
    """Incremental parser: :meth:`feed` bytes as they come, get whole events back.

    A frame split across reads is kept until the rest arrives, so the stream stays in step
    even when a wait is interrupted between two reads.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        # Set while the body of a MSG/HMSG is awaited: (header size, total size, and the
        # subject, sid and reply fields of its control line).
        self._pending: tuple[int, int, list[bytes]] | None = None

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while True:
            event = self._next_event()
            if event is None:
                return events
            events.append(event)

    def _next_event(self) -> Event | None:
        buffer = self._buffer
        if self._pending is not None:
            return self._message_body()
        end = buffer.find(CRLF)
        if end < 0:
            if len(buffer) > MAX_CONTROL_LINE:
                raise ProtocolError("control line too long")
            return None
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        op, _, rest = line.partition(b" ")
        op = op.upper()
        if op == b"MSG":
            fields = rest.split()
            if len(fields) not in (3, 4) or not fields[-1].isdigit():
                raise ProtocolError(f"bad MSG line {line!r}")
            self._pending = (0, int(fields[-1]), fields[:-1])
            return self._message_body()
        if op == b"HMSG":
            fields = rest.split()
            if len(fields) not in (4, 5) or not (fields[-1].isdigit() and fields[-2].isdigit()):
                raise ProtocolError(f"bad HMSG line {line!r}")
            header_size, total_size = int(fields[-2]), int(fields[-1])
            if header_size > total_size:
                raise ProtocolError(f"bad HMSG line {line!r}")
            self._pending = (header_size, total_size, fields[:-2])
            return self._message_body()
        if op == b"PING":
            return Ping()
        if op == b"PONG":
            return Pong()
        if op == b"+OK":
            return Ok()
        if op == b"-ERR":
            return Err(rest.decode("utf-8", "replace").strip().strip("'"))
        if op == b"INFO":
            try:
                fields_json = json.loads(rest)
            except ValueError as exc:
                raise ProtocolError(f"bad INFO: {exc}") from None
            if not isinstance(fields_json, dict):
                raise ProtocolError("bad INFO: not an object")
            return Info(fields_json)
        raise ProtocolError(f"unknown operation {line[:40]!r}")

    def _message_body(self) -> Msg | None:
        assert self._pending is not None
        header_size, total_size, fields = self._pending
        buffer = self._buffer
        if len(buffer) < total_size + 2:
            return None
        if buffer[total_size : total_size + 2] != CRLF:
            raise ProtocolError("message payload not followed by CRLF")
        body = bytes(buffer[:total_size])
        del buffer[: total_size + 2]
        self._pending = None
        subject, sid = fields[0], fields[1]
        reply = fields[2] if len(fields) == 3 else None
        header_block = body[:header_size] if header_size else None
        return Msg(subject, sid, reply, header_block, body[header_size:])
