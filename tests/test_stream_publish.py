"""nats_publish_*_stream: publish to JetStream and wait for the stream's ack."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from nats.js import JetStreamContext

from tests.jetstream_support import (
    Conn,
    add_stream,
    assert_sql_error,
    stream_messages,
    unique,
    with_jetstream,
)


@pytest.fixture
def stream(nats_url: str) -> tuple[str, str]:
    """A stream of this test's own: (stream name, subject prefix)."""
    name = unique("EVENTS")
    prefix = name.lower()
    add_stream(nats_url, name, [f"{prefix}.>"])
    return name, prefix


@pytest.mark.parametrize(
    ("function", "sql_type", "value", "stored"),
    [
        ("nats_publish_binary_stream", "bytea", b"\x00\xffbin", b"\x00\xffbin"),
        ("nats_publish_text_stream", "text", "héllo", "héllo".encode()),
        ("nats_publish_json_stream", "json", '{"b": 1,  "a": [2]}', b'{"b": 1,  "a": [2]}'),
        ("nats_publish_jsonb_stream", "jsonb", '{"b": 1,  "a": [2]}', b'{"a": [2], "b": 1}'),
    ],
)
def test_message_is_in_the_stream_when_the_call_returns(
    conn: Conn,
    nats_url: str,
    stream: tuple[str, str],
    function: str,
    sql_type: str,
    value: Any,
    stored: bytes,
) -> None:
    name, prefix = stream
    for number in (1, 2):
        conn.execute(f"SELECT {function}(%s, %s::{sql_type})", (f"{prefix}.n{number}", value))
        # Checked right after each call: the ack was awaited, nothing is still in flight.
        assert stream_messages(nats_url, name) == [
            (f"{prefix}.n{n}", stored) for n in range(1, number + 1)
        ]


def _raw_headers(nats_url: str, stream: str, seq: int) -> str:
    """The header block exactly as stored (nats-py's parsers keep one value per name)."""

    async def get(js: JetStreamContext) -> str:
        reply = await js._nc.request(
            f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"seq": seq}).encode(), timeout=5
        )
        message = json.loads(reply.data)["message"]
        return base64.b64decode(message["hdrs"]).decode()

    return with_jetstream(nats_url, get)


def test_headers_including_repeated_values(
    conn: Conn, nats_url: str, stream: tuple[str, str]
) -> None:
    name, prefix = stream
    conn.execute(
        "SELECT nats_publish_text_stream(%s, 'x', %s::jsonb)",
        (f"{prefix}.h", '{"Trace-Id": "abc", "Tag": ["red", "blue"]}'),
    )
    block = _raw_headers(nats_url, name, 1)
    assert block.startswith("NATS/1.0\r\n")
    lines = block.split("\r\n")
    assert "Trace-Id: abc" in lines
    assert [line for line in lines if line.startswith("Tag:")] == ["Tag: red", "Tag: blue"]


def test_msg_id_header_deduplicates(conn: Conn, nats_url: str, stream: tuple[str, str]) -> None:
    name, prefix = stream
    for _ in range(2):
        conn.execute(
            "SELECT nats_publish_text_stream(%s, 'once', '{\"Nats-Msg-Id\": \"m-1\"}')",
            (f"{prefix}.d",),
        )
    assert stream_messages(nats_url, name) == [(f"{prefix}.d", b"once")]


def test_no_stream_for_the_subject(conn: Conn) -> None:
    subject = unique("nostream") + ".x"
    error = assert_sql_error(
        conn,
        "SELECT nats_publish_text_stream(%s, 'x')",
        (subject,),
        "PN003",
        f'no stream captures subject "{subject}"',
    )
    assert error.diag.message_hint is not None and "stream" in error.diag.message_hint
    # The session's connection survives the error.
    conn.execute("SELECT nats_put_text(%s, 'k', 'v')", (unique("kv"),))


@pytest.mark.parametrize(
    ("args", "sqlstate", "message"),
    [
        ("NULL, 'x'", "22004", "subject must not be NULL"),
        ("'a.b', NULL", "22004", "payload must not be NULL"),
        ("'', 'x'", "22023", "subject must not be empty"),
        ("'a.*', 'x'", "22023", "wildcards"),
        ("'a b', 'x'", "22023", "whitespace"),
        ("'a.b', 'x', '[1]'", "22023", "headers must be a JSON object"),
        ("'a.b', 'x', '{\"k\": 1}'", "22023", "is not a string"),
        ("'a.b', 'x', '{\"k(\": \"v\"}'", "22023", "invalid header name"),
        ("'a.b', 'x', '{\"k\": \"a\\nb\"}'", "22023", "contains CR or LF"),
    ],
)
def test_bad_arguments(conn: Conn, args: str, sqlstate: str, message: str) -> None:
    assert_sql_error(conn, f"SELECT nats_publish_text_stream({args})", (), sqlstate, message)


def test_payload_over_max_payload(conn: Conn, stream: tuple[str, str]) -> None:
    _, prefix = stream
    assert_sql_error(
        conn,
        "SELECT nats_publish_binary_stream(%s, %s)",
        (f"{prefix}.big", b"x" * (1024 * 1024 + 1)),
        "54000",
        "larger than the server's max_payload (1048576 bytes)",
    )


def test_each_flavour_checks_null_payload(conn: Conn) -> None:
    for kind in ("binary", "text", "json", "jsonb"):
        assert_sql_error(
            conn,
            f"SELECT nats_publish_{kind}_stream('a.b', NULL)",
            (),
            "22004",
            "payload must not be NULL",
        )


def test_stream_refuses_the_message(conn: Conn, nats_url: str) -> None:
    name = unique("SMALL")

    async def add(js: JetStreamContext) -> None:
        await js.add_stream(name=name, subjects=[f"{name.lower()}.>"], max_msg_size=8)

    with_jetstream(nats_url, add)
    assert_sql_error(
        conn,
        "SELECT nats_publish_text_stream(%s, 'longer than eight bytes')",
        (f"{name.lower()}.x",),
        "PN000",
        "JetStream refused it: message size exceeds maximum allowed (error 10054)",
    )


@contextmanager
def junk_responder(url: str, subject: str) -> Iterator[None]:
    """A core NATS service on ``subject`` that answers every request with "pong"."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.recv(4096)  # INFO
    sock.sendall(
        f'CONNECT {{"verbose":false,"headers":true}}\r\nSUB {subject} 1\r\nPING\r\n'.encode()
    )

    def answer() -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                for line in buffer.split(b"\r\n"):
                    parts = line.split()
                    if parts[:1] in ([b"MSG"], [b"HMSG"]) and len(parts) >= 5:
                        sock.sendall(b"PUB " + parts[3] + b" 4\r\npong\r\n")
                buffer = buffer[buffer.rfind(b"\r\n") + 2 :]

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sock.close()
        thread.join(timeout=5)


def test_reply_that_is_not_an_ack(conn: Conn, nats_url: str) -> None:
    subject = unique("service") + ".ping"
    with junk_responder(nats_url, subject):
        error = assert_sql_error(
            conn,
            "SELECT nats_publish_text_stream(%s, 'x')",
            (subject,),
            "PN000",
            "the reply is not a JetStream acknowledgement",
        )
    assert subject in (error.diag.message_hint or "")
