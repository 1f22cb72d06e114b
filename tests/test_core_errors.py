"""Bad input to publish and request: a clear error with the right SQLSTATE, nothing sent, and
the session's connection stays as it was."""

from __future__ import annotations

import psycopg
import pytest

from devstack.nats import NatsServer
from devstack.stack import Stack
from tests.conftest import MakeDatabase, admin_connect
from tests.nats_helpers import NatsSide
from tests.queries import Conn, client_id

BAD_CALLS = [
    # (SQL, SQLSTATE, words the message must contain)
    ("nats_publish_text(NULL, 'x')", "22004", "subject must not be NULL"),
    ("nats_publish_text('a.b', NULL)", "22004", "payload must not be NULL"),
    ("nats_publish_binary('a.b', NULL)", "22004", "payload must not be NULL"),
    ("nats_publish_json('a.b', NULL)", "22004", "payload must not be NULL"),
    ("nats_publish_jsonb('a.b', NULL)", "22004", "payload must not be NULL"),
    ("nats_publish_text('', 'x')", "22023", "subject must not be empty"),
    ("nats_publish_text('a b', 'x')", "22023", "whitespace"),
    ("nats_publish_text(E'a\\r\\nPUB x 1', 'x')", "22023", "whitespace or a control character"),
    ("nats_publish_text(E'a\\tb', 'x')", "22023", "whitespace"),
    ("nats_publish_text('a..b', 'x')", "22023", "empty token"),
    ("nats_publish_text('.a', 'x')", "22023", "empty token"),
    ("nats_publish_text('a.', 'x')", "22023", "empty token"),
    ("nats_publish_text('a.*', 'x')", "22023", "wildcards"),
    ("nats_publish_text('a.>', 'x')", "22023", "wildcards"),
    ("nats_publish_text('a.b', 'x', 'r.*')", "22023", "invalid reply subject"),
    ("nats_publish_text('a.b', 'x', '')", "22023", "reply subject must not be empty"),
    ("nats_publish_text('a.b', 'x', NULL, '[1, 2]')", "22023", "JSON object, not an array"),
    ("nats_publish_text('a.b', 'x', NULL, '\"v\"')", "22023", "JSON object, not a string"),
    ("nats_publish_text('a.b', 'x', NULL, '3')", "22023", "JSON object, not a number"),
    ("nats_publish_text('a.b', 'x', NULL, 'null')", "22023", "JSON object, not null"),
    ("nats_publish_text('a.b', 'x', NULL, '{\"k\": 1}')", "22023", "1 is not a string"),
    ("nats_publish_text('a.b', 'x', NULL, '{\"k\": true}')", "22023", "true is not a string"),
    ("nats_publish_text('a.b', 'x', NULL, '{\"k\": null}')", "22023", "null is not a string"),
    ("nats_publish_text('a.b', 'x', NULL, '{\"k\": {\"a\": \"b\"}}')", "22023", "not a string"),
    ("nats_publish_text('a.b', 'x', NULL, '{\"k\": [\"a\", 2]}')", "22023", "2 is not a string"),
    ("nats_publish_text('a.b', 'x', NULL, '{\"bad name\": \"v\"}')", "22023", "header name"),
    ("nats_publish_text('a.b', 'x', NULL, '{\"k\": \"a\\r\\nb\"}')", "22023", "CR or LF"),
    ("nats_request_text(NULL, 'x')", "22004", "subject must not be NULL"),
    ("nats_request_text('a.b', NULL)", "22004", "payload must not be NULL"),
    ("nats_request_binary('a.>', 'x')", "22023", "wildcards"),
    ("nats_request_text('a.b', 'x', 0)", "22023", "timeout must be a positive number"),
    ("nats_request_text('a.b', 'x', -5)", "22023", "timeout must be a positive number"),
]


@pytest.mark.parametrize(("call", "sqlstate", "words"), BAD_CALLS)
def test_bad_input_is_a_clear_error_and_the_connection_stays(
    conn: Conn, nats_url: str, nats_side: NatsSide, call: str, sqlstate: str, words: str
) -> None:
    before = client_id(conn)
    received = nats_side.subscribe(nats_url, ">")
    with pytest.raises(psycopg.Error, match=words) as excinfo:
        conn.execute(f"SELECT {call}")
    assert excinfo.value.sqlstate == sqlstate
    assert str(excinfo.value).startswith("pgnats: ")
    conn.execute("SELECT nats_publish_text('after.error', 'fine')")
    message = received.next()
    assert (message.subject, message.data) == ("after.error", b"fine")
    received.assert_empty(0.1)  # nothing of the bad call was sent
    assert client_id(conn) == before


@pytest.fixture
def small_nats(private_nats: NatsServer) -> NatsServer:
    private_nats.extra_config = "max_payload: 1024"
    private_nats.restart()
    return private_nats


def test_payload_over_max_payload(
    stack: Stack, make_database: MakeDatabase, small_nats: NatsServer, nats_side: NatsSide
) -> None:
    received = nats_side.subscribe(small_nats.url, "big.>")
    with admin_connect(stack, make_database(nats_url=small_nats.url)) as conn:
        assert conn.execute("SELECT (nats_get_server_info()).max_payload").fetchone() == (1024,)
        before = client_id(conn)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=r"1025 bytes .*\(1024 bytes"):
            conn.execute("SELECT nats_publish_text('big.text', repeat('x', 1025))")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="headers count together"):
            conn.execute(
                "SELECT nats_publish_text('big.headers', repeat('x', 1000), NULL, "
                "jsonb_build_object('X-Pad', repeat('y', 30)))"
            )
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_payload"):
            conn.execute(
                "SELECT nats_request_binary('big.request', decode(repeat('00', 2000), 'hex'))"
            )
        conn.execute("SELECT nats_publish_text('big.fits', repeat('x', 1024))")
        message = received.next()
        assert (message.subject, len(message.data)) == ("big.fits", 1024)
        received.assert_empty(0.1)
        assert client_id(conn) == before


def test_server_without_headers(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer, nats_side: NatsSide
) -> None:
    private_nats.extra_config = "no_header_support: true"
    private_nats.restart()
    received = nats_side.subscribe(private_nats.url, "plain.>")
    with admin_connect(stack, make_database(nats_url=private_nats.url)) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="does not support headers"):
            conn.execute("SELECT nats_publish_text('plain.x', 'x', NULL, '{\"k\": \"v\"}')")
        conn.execute("SELECT nats_publish_text('plain.x', 'no headers')")
        assert received.next().data == b"no headers"
        # Without headers the server cannot say "no responders": the request times out.
        with pytest.raises(psycopg.Error, match="no reply") as excinfo:
            conn.execute("SELECT nats_request_text('nobody.home', 'x', 200)")
        assert excinfo.value.sqlstate == "PN001"
