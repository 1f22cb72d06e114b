"""JetStream object store from SQL: nats_put_file, nats_get_file, nats_delete_file,
nats_get_file_info, nats_get_file_list."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta

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

CHUNK = 128 * 1024


@pytest.fixture
def store() -> str:
    return unique("files")


def _digest(data: bytes) -> str:
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


def test_five_megabyte_round_trip(conn: Conn, nats_url: str, store: str) -> None:
    content = os.urandom(5 * 1024 * 1024 + 123)
    conn.execute("SELECT nats_put_file(%s, 'big.bin', %s)", (store, content))
    returned = scalar(conn, "SELECT nats_get_file(%s, 'big.bin')", (store,))
    assert hashlib.sha256(returned).digest() == hashlib.sha256(content).digest()
    size, chunks, digest = conn.execute(
        "SELECT size, chunks, digest FROM nats_get_file_info(%s, 'big.bin')", (store,)
    ).fetchone() or (None, None, None)
    assert (size, chunks, digest) == (len(content), -(-len(content) // CHUNK), _digest(content))

    async def read(js: JetStreamContext) -> bytes:
        result = await (await js.object_store(store)).get("big.bin")
        return bytes(result.data or b"")

    assert with_jetstream(nats_url, read) == content  # other clients read it back too


def test_info_columns(conn: Conn, store: str) -> None:
    before = datetime.now(UTC)
    conn.execute("SELECT nats_put_file(%s, 'dir/a.txt', 'hello'::bytea)", (store,))
    cursor = conn.execute("SELECT * FROM nats_get_file_info(%s, 'dir/a.txt')", (store,))
    columns = [column.name for column in cursor.description or []]
    assert columns == [
        "name",
        "description",
        "metadata",
        "headers",
        "options",
        "bucket",
        "nuid",
        "size",
        "chunks",
        "modified",
        "digest",
        "deleted",
    ]
    row = dict(zip(columns, cursor.fetchone() or (), strict=True))
    nuid = row.pop("nuid")
    modified = row.pop("modified")
    assert isinstance(nuid, str) and len(nuid) == 22
    assert before - timedelta(seconds=1) <= modified <= datetime.now(UTC)
    assert row == {
        "name": "dir/a.txt",
        "description": None,
        "metadata": None,
        "headers": None,
        "options": {"max_chunk_size": CHUNK},
        "bucket": store,
        "size": 5,
        "chunks": 1,
        "digest": _digest(b"hello"),
        "deleted": False,
    }


def test_info_keeps_fields_written_by_other_clients(conn: Conn, nats_url: str, store: str) -> None:
    conn.execute("SELECT nats_put_file(%s, 'doc', 'x'::bytea)", (store,))

    async def annotate(js: JetStreamContext) -> None:
        # Rewrite the meta record the way the Go client writes one with metadata.
        subject = f"$O.{store}.M.{base64.urlsafe_b64encode(b'doc').decode()}"
        record = json.loads((await js.get_last_msg(f"OBJ_{store}", subject)).data or b"{}")
        record.update(
            description="a document",
            metadata={"owner": "ops"},
            headers={"Content-Type": ["text/plain"]},
        )
        await js.publish(subject, json.dumps(record).encode(), headers={"Nats-Rollup": "sub"})

    with_jetstream(nats_url, annotate)
    row = conn.execute(
        "SELECT description, metadata, headers, size FROM nats_get_file_info(%s, 'doc')",
        (store,),
    ).fetchone()
    assert row == ("a document", {"owner": "ops"}, {"Content-Type": ["text/plain"]}, 1)


def test_empty_file(conn: Conn, store: str) -> None:
    conn.execute("SELECT nats_put_file(%s, 'empty', ''::bytea)", (store,))
    assert scalar(conn, "SELECT nats_get_file(%s, 'empty')", (store,)) == b""
    assert conn.execute(
        "SELECT size, chunks FROM nats_get_file_info(%s, 'empty')", (store,)
    ).fetchone() == (0, 0)


def test_replace_a_file(conn: Conn, nats_url: str, store: str) -> None:
    conn.execute("SELECT nats_put_file(%s, 'f', %s)", (store, b"a" * (3 * CHUNK)))
    conn.execute("SELECT nats_put_file(%s, 'f', 'second'::bytea)", (store,))
    assert scalar(conn, "SELECT nats_get_file(%s, 'f')", (store,)) == b"second"

    async def stored_messages(js: JetStreamContext) -> int:
        return int((await js.stream_info(f"OBJ_{store}")).state.messages)

    # The first version's chunks were purged: one chunk and one meta record remain.
    assert with_jetstream(nats_url, stored_messages) == 2


def test_list(conn: Conn, store: str) -> None:
    for name, content in (("b.txt", b"bb"), ("a.txt", b"a"), ("c.txt", b"ccc")):
        conn.execute("SELECT nats_put_file(%s, %s, %s)", (store, name, content))
    conn.execute("SELECT nats_delete_file(%s, 'c.txt')", (store,))
    rows = conn.execute(
        "SELECT name, size, digest, deleted, bucket FROM nats_get_file_list(%s)", (store,)
    ).fetchall()
    assert rows == [
        ("a.txt", 1, _digest(b"a"), False, store),
        ("b.txt", 2, _digest(b"bb"), False, store),
    ]


def test_list_of_empty_and_missing_stores(conn: Conn, nats_url: str, store: str) -> None:
    assert conn.execute("SELECT * FROM nats_get_file_list(%s)", (store,)).fetchall() == []
    assert not stream_exists(nats_url, f"OBJ_{store}")
    conn.execute("SELECT nats_put_file(%s, 'only', 'x'::bytea)", (store,))
    conn.execute("SELECT nats_delete_file(%s, 'only')", (store,))
    assert conn.execute("SELECT * FROM nats_get_file_list(%s)", (store,)).fetchall() == []


def test_delete(conn: Conn, store: str) -> None:
    conn.execute("SELECT nats_put_file(%s, 'gone', %s)", (store, b"z" * (2 * CHUNK)))
    conn.execute("SELECT nats_delete_file(%s, 'gone')", (store,))
    for query in (
        "SELECT nats_get_file(%s, 'gone')",
        "SELECT * FROM nats_get_file_info(%s, 'gone')",
        "SELECT nats_delete_file(%s, 'gone')",
    ):
        assert_sql_error(
            conn, query, (store,), "PN005", f'file "gone" not found in object store "{store}"'
        )
    # Put again under the same name.
    conn.execute("SELECT nats_put_file(%s, 'gone', 'back'::bytea)", (store,))
    assert scalar(conn, "SELECT nats_get_file(%s, 'gone')", (store,)) == b"back"


@pytest.mark.parametrize(
    "query",
    [
        "SELECT nats_get_file(%s, 'nope')",
        "SELECT * FROM nats_get_file_info(%s, 'nope')",
        "SELECT nats_delete_file(%s, 'nope')",
    ],
)
def test_missing_file(conn: Conn, nats_url: str, store: str, query: str) -> None:
    assert_sql_error(
        conn, query, (store,), "PN005", f'file "nope" not found: object store "{store}" does not'
    )
    assert not stream_exists(nats_url, f"OBJ_{store}")
    conn.execute("SELECT nats_put_file(%s, 'other', 'x'::bytea)", (store,))
    assert_sql_error(
        conn, query, (store,), "PN005", f'file "nope" not found in object store "{store}"'
    )


def test_file_written_by_another_client(conn: Conn, nats_url: str, store: str) -> None:
    async def put(js: JetStreamContext) -> None:
        await (await js.create_object_store(store)).put("from-python", b"data" * 50000)

    with_jetstream(nats_url, put)
    assert scalar(conn, "SELECT nats_get_file(%s, 'from-python')", (store,)) == b"data" * 50000


def test_store_deleted_behind_the_sessions_back(conn: Conn, nats_url: str, store: str) -> None:
    conn.execute("SELECT nats_put_file(%s, 'a', 'one'::bytea)", (store,))

    async def delete_store(js: JetStreamContext) -> None:
        await js.delete_object_store(store)

    with_jetstream(nats_url, delete_store)
    conn.execute("SELECT nats_put_file(%s, 'a', 'two'::bytea)", (store,))
    assert scalar(conn, "SELECT nats_get_file(%s, 'a')", (store,)) == b"two"


@pytest.mark.parametrize(
    ("query", "sqlstate", "message"),
    [
        ("SELECT nats_put_file(NULL, 'n', 'x')", "22004", "object store name must not be NULL"),
        ("SELECT nats_put_file('s', NULL, 'x')", "22004", "file name must not be NULL"),
        ("SELECT nats_put_file('s', 'n', NULL)", "22004", "content must not be NULL"),
        ("SELECT nats_get_file(NULL, 'n')", "22004", "object store name must not be NULL"),
        ("SELECT nats_get_file('s', NULL)", "22004", "file name must not be NULL"),
        ("SELECT nats_delete_file(NULL, 'n')", "22004", "object store name must not be NULL"),
        ("SELECT nats_delete_file('s', NULL)", "22004", "file name must not be NULL"),
        ("SELECT * FROM nats_get_file_info(NULL, 'n')", "22004", "must not be NULL"),
        ("SELECT * FROM nats_get_file_info('s', NULL)", "22004", "file name must not be NULL"),
        ("SELECT * FROM nats_get_file_list(NULL)", "22004", "must not be NULL"),
        ("SELECT nats_put_file('a store', 'n', 'x')", "22023", "invalid object store name"),
        ("SELECT nats_get_file('s.t', 'n')", "22023", "invalid object store name"),
        ("SELECT * FROM nats_get_file_list('')", "22023", "must not be empty"),
        ("SELECT nats_put_file('s', '', 'x')", "22023", "file name must not be empty"),
    ],
)
def test_bad_arguments(conn: Conn, query: str, sqlstate: str, message: str) -> None:
    assert_sql_error(conn, query, (), sqlstate, message)
