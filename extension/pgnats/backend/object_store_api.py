"""JetStream object store from SQL: nats_put_file, nats_get_file, nats_delete_file,
nats_get_file_info and nats_get_file_list.

nats-py does the chunking (128 KiB chunks), the SHA-256 digest and the meta records. As for
key-value buckets, a put creates its store with the defaults when it does not exist, and
reads never create one: a missing store has no files (NotFound for one file, no rows for the
list). Deleted files are not found and not listed.

The file info columns come from the file's meta record as stored (so ``metadata``, which
nats-py does not model but other clients write, is kept), and ``modified`` is the time the
server stored that record.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from datetime import datetime
from typing import Any

import nats.js.errors
from nats.js.api import DeliverPolicy, RawStreamMsg
from nats.js.object_store import (
    OBJ_ALL_META_PRE_TEMPLATE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
    ObjectStore,
)

from pgnats.backend.event_loop import InlineSink
from pgnats.backend.jetstream_client import Connection, jetstream_session
from pgnats.backend.jetstream_errors import (
    IncompleteDownload,
    is_name_in_use,
    is_stream_missing,
)
from pgnats.backend.sql_errors import sql_function
from pgnats.errors import NotFound, NullInput
from pgnats.jetstream_names import validate_object_name, validate_store_name

FileRow = dict[str, Any]


async def _store(connection: Connection, name: str, *, create: bool) -> ObjectStore | None:
    """The object store ``name`` (remembered, looked up, or created with ``create``)."""
    known = connection.object_stores.get(name)
    if known is not None:
        return known
    try:
        store = await connection.js.object_store(name)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            return None
        try:
            store = await connection.js.create_object_store(name)
        except nats.js.errors.APIError as exc:
            if not is_name_in_use(exc):
                raise
            store = await connection.js.object_store(name)
    connection.object_stores[name] = store
    return store


def _not_found(store: str, name: str, *, store_exists: bool = True) -> NotFound:
    if not store_exists:
        return NotFound(f'file "{name}" not found: object store "{store}" does not exist')
    return NotFound(f'file "{name}" not found in object store "{store}"')


@sql_function
def nats_put_file(store: Any, name: Any, content: Any) -> None:
    store = validate_store_name(store)
    name = validate_object_name(name)
    if content is None:
        raise NullInput("content must not be NULL")
    data = bytes(content)

    async def put(connection: Connection) -> None:
        was_known = store in connection.object_stores
        target = await _store(connection, store, create=True)
        assert target is not None
        try:
            await target.put(name, data)
            return
        except Exception as exc:
            # A remembered store that was deleted since: nothing was stored, so make it again.
            if not (was_known and is_stream_missing(exc)):
                raise
            connection.object_stores.pop(store, None)
        target = await _store(connection, store, create=True)
        assert target is not None
        await target.put(name, data)

    action = f'put file "{name}" into object store "{store}"'
    jetstream_session().run(action, put, may_have_happened=True)


def _verify(name: str, info: Any, data: bytes) -> None:
    """nats-py checks the digest only when the download reached the last chunk; a download
    cut short by a lost connection would otherwise return part of the file."""
    if info.size is not None and len(data) != info.size:
        raise IncompleteDownload(
            f'file "{name}": got {len(data)} of {info.size} bytes (the download was cut short)'
        )
    if info.digest:
        encoded = info.digest.split("=", 1)[1] if "=" in info.digest else info.digest
        expected = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        if hashlib.sha256(data).digest() != expected:
            raise IncompleteDownload(f'file "{name}": the content does not match its digest')


@sql_function
def nats_get_file(store: Any, name: Any) -> bytes:
    store = validate_store_name(store)
    name = validate_object_name(name)

    async def get(connection: Connection) -> bytes:
        source = await _store(connection, store, create=False)
        if source is None:
            raise _not_found(store, name, store_exists=False)
        sink = InlineSink()
        # nats-py only calls write() on writeinto (annotated as a BufferedIOBase).
        download = asyncio.ensure_future(source.get(name, writeinto=sink))  # type: ignore[arg-type]
        # The chunks come from a push consumer, which has no timeout of its own: give up
        # when no chunk has arrived for request_timeout.
        while not download.done():
            await asyncio.wait((download,), timeout=connection.request_timeout)
            if not download.done() and time.monotonic() - sink.last_write > (
                connection.request_timeout
            ):
                download.cancel()
                raise TimeoutError("the download stalled")
        try:
            result = download.result()
        except nats.js.errors.ObjectNotFoundError:
            raise _not_found(store, name) from None
        # nats-py follows a link to another store without the sink.
        data = sink.getvalue() if sink.writes else bytes(result.data or b"")
        _verify(name, result.info, data)
        return data

    return jetstream_session().run(f'get file "{name}" from object store "{store}"', get)


@sql_function
def nats_delete_file(store: Any, name: Any) -> None:
    store = validate_store_name(store)
    name = validate_object_name(name)

    async def delete(connection: Connection) -> None:
        target = await _store(connection, store, create=False)
        if target is None:
            raise _not_found(store, name, store_exists=False)
        try:
            await target.delete(name)
        except nats.js.errors.ObjectNotFoundError:
            raise _not_found(store, name) from None

    action = f'delete file "{name}" from object store "{store}"'
    jetstream_session().run(action, delete, may_have_happened=True)


def _jsonb(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _file_row(record: dict[str, Any], modified: datetime | None) -> FileRow:
    """A pgnats.file_info row from a meta record (the JSON other clients write too)."""
    return {
        "name": record.get("name"),
        "description": record.get("description"),
        "metadata": _jsonb(record.get("metadata")),
        "headers": _jsonb(record.get("headers")),
        "options": _jsonb(record.get("options")),
        "bucket": record.get("bucket"),
        "nuid": record.get("nuid"),
        "size": int(record.get("size") or 0),
        "chunks": int(record.get("chunks") or 0),
        "modified": modified.isoformat() if modified is not None else None,
        "digest": record.get("digest") or None,
        "deleted": bool(record.get("deleted", False)),
    }


def _meta_subject(store: str, name: str) -> str:
    encoded = base64.urlsafe_b64encode(name.encode("utf-8")).decode()
    return OBJ_META_PRE_TEMPLATE.format(bucket=store, obj=encoded)


@sql_function
def nats_get_file_info(store: Any, name: Any) -> list[FileRow]:
    store = validate_store_name(store)
    name = validate_object_name(name)

    async def info(connection: Connection) -> FileRow:
        if await _store(connection, store, create=False) is None:
            raise _not_found(store, name, store_exists=False)
        stream = OBJ_STREAM_TEMPLATE.format(bucket=store)
        try:
            message: RawStreamMsg = await connection.js.get_last_msg(
                stream, _meta_subject(store, name)
            )
        except nats.js.errors.NotFoundError:
            raise _not_found(store, name) from None
        record = json.loads(message.data or b"{}")
        if record.get("deleted"):
            raise _not_found(store, name)
        return _file_row(record, message.time)

    action = f'get info of file "{name}" in object store "{store}"'
    return [jetstream_session().run(action, info)]


@sql_function
def nats_get_file_list(store: Any) -> list[FileRow]:
    store = validate_store_name(store)

    async def listing(connection: Connection) -> list[FileRow]:
        if await _store(connection, store, create=False) is None:
            return []
        stream = OBJ_STREAM_TEMPLATE.format(bucket=store)
        all_meta = OBJ_ALL_META_PRE_TEMPLATE.format(bucket=store)
        try:
            await connection.js.get_last_msg(stream, all_meta)
        except nats.js.errors.NotFoundError:
            return []  # an empty store (a consumer would wait for a first record forever)
        # The latest meta record of every file, as nats-py's ObjectStore.list reads them,
        # but keeping each record whole and the time the server stored it.
        subscription = await connection.js.subscribe(
            all_meta, ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
        )
        rows: list[FileRow] = []
        try:
            while True:
                message = await subscription.next_msg(timeout=connection.request_timeout)
                record = json.loads(message.data or b"{}")
                if not record.get("deleted"):
                    rows.append(_file_row(record, message.metadata.timestamp))
                if message.metadata.num_pending == 0:
                    break
        finally:
            await subscription.unsubscribe()
        return sorted(rows, key=lambda row: str(row["name"]))

    return jetstream_session().run(f'list the files of object store "{store}"', listing)
