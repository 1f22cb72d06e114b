"""JetStream key-value from SQL: nats_put_*, nats_get_*, nats_delete_value."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js import JetStreamContext

from tests.jetstream_support import (
    Conn,
    assert_sql_error,
    scalar,
    stream_exists,
    unique,
    with_jetstream,
)


@pytest.fixture
def bucket() -> str:
    return unique("kv")


@pytest.mark.parametrize(
    ("kind", "sql_type", "value", "expected"),
    [
        ("binary", "bytea", b"\x00\x01\xfe\xff", b"\x00\x01\xfe\xff"),
        ("text", "text", "héllo wörld", "héllo wörld"),
        ("json", "json", '{"b": 1,  "a": [1, 2]}', {"b": 1, "a": [1, 2]}),
        ("jsonb", "jsonb", '{"b": 1,  "a": [1, 2]}', {"a": [1, 2], "b": 1}),
    ],
)
def test_put_then_get_each_flavour(
    conn: Conn, bucket: str, kind: str, sql_type: str, value: Any, expected: Any
) -> None:
    revision = scalar(conn, f"SELECT nats_put_{kind}(%s, 'k.1', %s::{sql_type})", (bucket, value))
    assert revision == 1
    assert scalar(conn, f"SELECT nats_get_{kind}(%s, 'k.1')", (bucket,)) == expected
    assert scalar(conn, f"SELECT pg_typeof(nats_get_{kind}(%s, 'k.1'))::text", (bucket,)) == (
        sql_type
    )


def test_json_keeps_its_text(conn: Conn, bucket: str) -> None:
    conn.execute("SELECT nats_put_json(%s, 'j', '{\"b\": 1,  \"a\": 2}'::json)", (bucket,))
    assert scalar(conn, "SELECT nats_get_json(%s, 'j')::text", (bucket,)) == '{"b": 1,  "a": 2}'


def test_revisions_increase_per_bucket(conn: Conn, bucket: str) -> None:
    revisions = [
        scalar(conn, "SELECT nats_put_text(%s, %s, 'v')", (bucket, key)) for key in ("a", "b", "a")
    ]
    assert revisions == [1, 2, 3]
    assert scalar(conn, "SELECT pg_typeof(nats_put_text(%s, 'a', 'v'))::text", (bucket,)) == (
        "bigint"
    )


def test_missing_key_is_null(conn: Conn, bucket: str) -> None:
    conn.execute("SELECT nats_put_text(%s, 'present', 'v')", (bucket,))
    for kind in ("binary", "text", "json", "jsonb"):
        assert scalar(conn, f"SELECT nats_get_{kind}(%s, 'absent')", (bucket,)) is None


def test_get_from_missing_bucket_is_null_and_creates_nothing(
    conn: Conn, nats_url: str, bucket: str
) -> None:
    assert scalar(conn, "SELECT nats_get_text(%s, 'k')", (bucket,)) is None
    conn.execute("SELECT nats_delete_value(%s, 'k')", (bucket,))
    assert not stream_exists(nats_url, f"KV_{bucket}")


def test_put_creates_the_bucket_with_defaults(conn: Conn, nats_url: str, bucket: str) -> None:
    conn.execute("SELECT nats_put_text(%s, 'k', 'v')", (bucket,))

    async def status(js: JetStreamContext) -> tuple[int, float | None]:
        kv = await js.key_value(bucket)
        state = await kv.status()
        return state.history, state.ttl

    assert with_jetstream(nats_url, status) == (1, 0)


def test_delete_then_get_is_null_then_put_again(conn: Conn, bucket: str) -> None:
    assert scalar(conn, "SELECT nats_put_text(%s, 'k', 'first')", (bucket,)) == 1
    conn.execute("SELECT nats_delete_value(%s, 'k')", (bucket,))
    assert scalar(conn, "SELECT nats_get_text(%s, 'k')", (bucket,)) is None
    # The delete marker took revision 2.
    assert scalar(conn, "SELECT nats_put_text(%s, 'k', 'second')", (bucket,)) == 3
    assert scalar(conn, "SELECT nats_get_text(%s, 'k')", (bucket,)) == "second"


def test_purged_key_is_null(conn: Conn, nats_url: str, bucket: str) -> None:
    conn.execute("SELECT nats_put_text(%s, 'k', 'v')", (bucket,))

    async def purge(js: JetStreamContext) -> None:
        await (await js.key_value(bucket)).purge("k")

    with_jetstream(nats_url, purge)
    assert scalar(conn, "SELECT nats_get_text(%s, 'k')", (bucket,)) is None


def test_delete_of_missing_key_succeeds(conn: Conn, bucket: str) -> None:
    conn.execute("SELECT nats_put_text(%s, 'other', 'v')", (bucket,))
    conn.execute("SELECT nats_delete_value(%s, 'never-put')", (bucket,))
    assert scalar(conn, "SELECT nats_get_text(%s, 'other')", (bucket,)) == "v"


def test_empty_value_is_not_null(conn: Conn, bucket: str) -> None:
    conn.execute("SELECT nats_put_text(%s, 'e', '')", (bucket,))
    assert scalar(conn, "SELECT nats_get_text(%s, 'e')", (bucket,)) == ""
    assert scalar(conn, "SELECT nats_get_binary(%s, 'e')", (bucket,)) == b""


def test_values_written_by_other_clients(conn: Conn, nats_url: str, bucket: str) -> None:
    conn.execute("SELECT nats_put_text(%s, 'from.sql', 'hello')", (bucket,))

    async def exchange(js: JetStreamContext) -> bytes | None:
        kv = await js.key_value(bucket)
        await kv.put("from.python", b'{"n": 42}')
        return (await kv.get("from.sql")).value

    assert with_jetstream(nats_url, exchange) == b"hello"
    assert scalar(conn, "SELECT nats_get_jsonb(%s, 'from.python') ->> 'n'", (bucket,)) == "42"


def test_bucket_deleted_behind_the_sessions_back(conn: Conn, nats_url: str, bucket: str) -> None:
    conn.execute("SELECT nats_put_text(%s, 'k', 'v1')", (bucket,))

    async def delete_bucket(js: JetStreamContext) -> None:
        await js.delete_key_value(bucket)

    with_jetstream(nats_url, delete_bucket)
    assert scalar(conn, "SELECT nats_get_text(%s, 'k')", (bucket,)) is None
    assert scalar(conn, "SELECT nats_put_text(%s, 'k', 'v2')", (bucket,)) == 1
    assert scalar(conn, "SELECT nats_get_text(%s, 'k')", (bucket,)) == "v2"
    with_jetstream(nats_url, delete_bucket)
    # A put right after the deletion (no read first) recreates the bucket too.
    assert scalar(conn, "SELECT nats_put_text(%s, 'k', 'v3')", (bucket,)) == 1


def test_not_utf8_read_as_text(conn: Conn, bucket: str) -> None:
    conn.execute("SELECT nats_put_binary(%s, 'raw', '\\xff00'::bytea)", (bucket,))
    assert_sql_error(
        conn,
        "SELECT nats_get_text(%s, 'raw')",
        (bucket,),
        "22023",
        f'the value of key "raw" in bucket "{bucket}" is not valid UTF-8',
    )
    assert scalar(conn, "SELECT nats_get_binary(%s, 'raw')", (bucket,)) == b"\xff\x00"


@pytest.mark.parametrize("kind", ["text", "json", "jsonb"])
def test_nul_byte_read_as_text(conn: Conn, bucket: str, kind: str) -> None:
    conn.execute("SELECT nats_put_binary(%s, 'nul', '\\x610062'::bytea)", (bucket,))
    assert_sql_error(
        conn,
        f"SELECT nats_get_{kind}(%s, 'nul')",
        (bucket,),
        "22023",
        f'the value of key "nul" in bucket "{bucket}" contains a NUL byte (byte 1)',
    )


@pytest.mark.parametrize("kind", ["json", "jsonb"])
def test_not_json_read_as_json(conn: Conn, bucket: str, kind: str) -> None:
    conn.execute("SELECT nats_put_text(%s, 't', 'not json')", (bucket,))
    assert_sql_error(
        conn,
        f"SELECT nats_get_{kind}(%s, 't')",
        (bucket,),
        "22023",
        f'the value of key "t" in bucket "{bucket}" is not valid JSON',
    )


@pytest.mark.parametrize(
    ("query", "sqlstate", "message"),
    [
        ("SELECT nats_put_text(NULL, 'k', 'v')", "22004", "bucket name must not be NULL"),
        ("SELECT nats_put_text('b', NULL, 'v')", "22004", "key must not be NULL"),
        ("SELECT nats_put_text('b', 'k', NULL)", "22004", "value must not be NULL"),
        ("SELECT nats_put_binary('b', 'k', NULL)", "22004", "value must not be NULL"),
        ("SELECT nats_put_json('b', 'k', NULL)", "22004", "value must not be NULL"),
        ("SELECT nats_put_jsonb('b', 'k', NULL)", "22004", "value must not be NULL"),
        ("SELECT nats_get_text(NULL, 'k')", "22004", "bucket name must not be NULL"),
        ("SELECT nats_get_jsonb('b', NULL)", "22004", "key must not be NULL"),
        ("SELECT nats_delete_value(NULL, 'k')", "22004", "bucket name must not be NULL"),
        ("SELECT nats_delete_value('b', NULL)", "22004", "key must not be NULL"),
        ("SELECT nats_put_text('my bucket', 'k', 'v')", "22023", "invalid bucket name"),
        ("SELECT nats_put_text('b.c', 'k', 'v')", "22023", "invalid bucket name"),
        ("SELECT nats_get_text('', 'k')", "22023", "bucket name must not be empty"),
        ("SELECT nats_put_text('b', 'a b', 'v')", "22023", "invalid key 'a b'"),
        ("SELECT nats_put_text('b', 'a.*', 'v')", "22023", "invalid key"),
        ("SELECT nats_get_text('b', '.k')", "22023", "may not start or end with '.'"),
        ("SELECT nats_delete_value('b', 'a..b')", "22023", "contain '..'"),
        ("SELECT nats_get_binary('b', '')", "22023", "key must not be empty"),
    ],
)
def test_bad_arguments(conn: Conn, query: str, sqlstate: str, message: str) -> None:
    assert_sql_error(conn, query, (), sqlstate, message)


def test_value_over_max_payload(conn: Conn, bucket: str) -> None:
    assert_sql_error(
        conn,
        "SELECT nats_put_binary(%s, 'big', %s)",
        (bucket, b"x" * (1024 * 1024 + 1)),
        "54000",
        "larger than the server's max_payload",
    )


def test_stream_that_is_not_a_bucket(conn: Conn, nats_url: str, bucket: str) -> None:
    async def add(js: JetStreamContext) -> None:
        await js.add_stream(name=f"KV_{bucket}", subjects=[f"{bucket}.>"], max_msgs_per_subject=0)

    with_jetstream(nats_url, add)
    assert_sql_error(
        conn,
        "SELECT nats_get_text(%s, 'k')",
        (bucket,),
        "22023",
        f'"{bucket}" is not a key-value bucket',
    )
