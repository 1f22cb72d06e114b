"""The NATS wire format: frames we build and the incremental parser (no server needed)."""

from __future__ import annotations

import pytest
from pgnats.backend import nats_protocol as proto

SERVER_STREAM = (
    b'INFO {"server_id":"N1","max_payload":1048576,"headers":true}\r\n'
    b"PING\r\n"
    b"+OK\r\n"
    b"MSG a.b 1 5\r\nhello\r\n"
    b"MSG a.b 1 _INBOX.x.1 0\r\n\r\n"
    b"HMSG _INBOX.x.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    b"HMSG a.c 7 r.1 18 24\r\nNATS/1.0\r\nK: v\r\n\r\nbody\r\n\r\n"
    b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n"
    b"PONG\r\n"
)

EXPECTED = [
    proto.Info({"server_id": "N1", "max_payload": 1048576, "headers": True}),
    proto.Ping(),
    proto.Ok(),
    proto.Msg(b"a.b", b"1", None, None, b"hello"),
    proto.Msg(b"a.b", b"1", b"_INBOX.x.1", None, b""),
    proto.Msg(b"_INBOX.x.2", b"1", None, b"NATS/1.0 503\r\n\r\n", b""),
    proto.Msg(b"a.c", b"7", b"r.1", b"NATS/1.0\r\nK: v\r\n\r\n", b"body\r\n"),
    proto.Err('Permissions Violation for Publish to "x"'),
    proto.Pong(),
]


def test_whole_stream() -> None:
    assert proto.Parser().feed(SERVER_STREAM) == EXPECTED


def test_stream_in_one_byte_pieces() -> None:
    """Frames torn across reads (an interrupted wait reads part of one) come out whole."""
    parser = proto.Parser()
    events: list[proto.Event] = []
    for index in range(len(SERVER_STREAM)):
        events += parser.feed(SERVER_STREAM[index : index + 1])
    assert events == EXPECTED


@pytest.mark.parametrize(
    "data",
    [
        b"HELLO\r\n",
        b"MSG a.b 1 x\r\n",
        b"MSG a.b 1 3\r\nabcd\r\n",
        b"HMSG a.b 1 9 5\r\n",
        b"INFO [1]\r\n",
        b"INFO {nope\r\n",
        b"PING" + b"x" * (proto.MAX_CONTROL_LINE + 1),
    ],
)
def test_protocol_errors(data: bytes) -> None:
    with pytest.raises(proto.ProtocolError):
        proto.Parser().feed(data)


def test_frames() -> None:
    assert proto.pub_frame(b"a.b", None, b"hi") == b"PUB a.b 2\r\nhi\r\n"
    assert proto.pub_frame(b"a.b", b"r", b"") == b"PUB a.b r 0\r\n\r\n"
    block = b"NATS/1.0\r\nK: v\r\n\r\n"
    assert (
        proto.hpub_frame(b"a.b", None, block, b"xyz") == b"HPUB a.b 18 21\r\n" + block + b"xyz\r\n"
    )
    assert proto.hpub_frame(b"a.b", b"r", block, b"") == b"HPUB a.b r 18 18\r\n" + block + b"\r\n"
    assert proto.sub_frame(b"_INBOX.x.*", b"1") == b"SUB _INBOX.x.* 1\r\n"
    assert proto.connect_frame({"verbose": False}) == b'CONNECT {"verbose":false}\r\n'


@pytest.mark.parametrize(
    ("block", "code", "description"),
    [
        (b"NATS/1.0 503\r\n\r\n", 503, ""),
        (b"NATS/1.0 408 Request Timeout\r\n\r\n", 408, "Request Timeout"),
        (b"NATS/1.0\r\nK: v\r\n\r\n", None, ""),
    ],
)
def test_header_status(block: bytes, code: int | None, description: str) -> None:
    assert proto.header_status(block) == proto.Status(code, description)
