"""JetStream key-value from SQL: nats_put_*, nats_get_*, nats_delete_value.

A put creates its bucket (with nats-py's defaults: history 1, no TTL, file storage) when it
does not exist. Reads and deletes never create one: a missing bucket reads as a missing key
(NULL), and deleting from it does nothing. The session remembers buckets it has seen; when
one is deleted behind its back, the next put notices (no stream answers), creates it again
and puts once more, which is safe because nothing was stored.
"""

from __future__ import annotations

from typing import Any

import nats.js.errors
from nats.js.kv import KeyValue

from pgnats.backend.jetstream_client import Connection, jetstream_session
from pgnats.backend.jetstream_errors import is_name_in_use, is_stream_missing
from pgnats.backend.payloads import PayloadKind, decode_payload, encode_payload
from pgnats.backend.sql_errors import sql_function
from pgnats.errors import InvalidInput
from pgnats.jetstream_names import validate_bucket_name, validate_key


async def _bucket(connection: Connection, name: str, *, create: bool) -> KeyValue | None:
    """The bucket ``name``: from the session's memory, else looked up, else (``create``)
    created with the defaults; ``None`` when it does not exist and ``create`` is false."""
    known = connection.key_values.get(name)
    if known is not None:
        return known
    try:
        bucket = await connection.js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            return None
        try:
            bucket = await connection.js.create_key_value(bucket=name)
        except nats.js.errors.APIError as exc:
            if not is_name_in_use(exc):
                raise
            bucket = await connection.js.key_value(name)
    except nats.js.errors.BadBucketError:
        raise InvalidInput(
            f'"{name}" is not a key-value bucket: its stream KV_{name} keeps no per-key history'
        ) from None
    connection.key_values[name] = bucket
    return bucket


def _bucket_vanished(connection: Connection, name: str, exc: Exception, was_known: bool) -> bool:
    """True when ``exc`` says the remembered bucket ``name`` no longer exists (and forget it)."""
    if not (was_known and is_stream_missing(exc) and connection.jetstream_enabled):
        return False
    connection.key_values.pop(name, None)
    return True


def put_value(kind: PayloadKind, bucket: Any, key: Any, data: Any) -> int:
    bucket = validate_bucket_name(bucket)
    key = validate_key(key, bucket)
    value = encode_payload(kind, data, what="value")

    async def put(connection: Connection) -> int:
        was_known = bucket in connection.key_values
        store = await _bucket(connection, bucket, create=True)
        assert store is not None
        try:
            return await store.put(key, value)
        except Exception as exc:
            if not _bucket_vanished(connection, bucket, exc, was_known):
                raise
        store = await _bucket(connection, bucket, create=True)
        assert store is not None
        return await store.put(key, value)

    action = f'put key "{key}" into bucket "{bucket}"'
    return jetstream_session().run(action, put, may_have_happened=True)


def get_value(kind: PayloadKind, bucket: Any, key: Any) -> Any:
    bucket = validate_bucket_name(bucket)
    key = validate_key(key, bucket)

    async def read(store: KeyValue) -> bytes | None:
        try:
            entry = await store.get(key)
        except nats.js.errors.KeyNotFoundError:  # missing, deleted or purged
            return None
        return entry.value or b""  # nats-py gives None for an empty value

    async def get(connection: Connection) -> bytes | None:
        was_known = bucket in connection.key_values
        store = await _bucket(connection, bucket, create=False)
        if store is None:
            return None
        try:
            return await read(store)
        except Exception as exc:
            if not _bucket_vanished(connection, bucket, exc, was_known):
                raise
        store = await _bucket(connection, bucket, create=False)
        return None if store is None else await read(store)

    data = jetstream_session().run(f'get key "{key}" from bucket "{bucket}"', get)
    if data is None:
        return None
    return decode_payload(kind, data, what=f'the value of key "{key}" in bucket "{bucket}"')


@sql_function
def nats_delete_value(bucket: Any, key: Any) -> None:
    bucket = validate_bucket_name(bucket)
    key = validate_key(key, bucket)

    async def delete(connection: Connection) -> None:
        was_known = bucket in connection.key_values
        store = await _bucket(connection, bucket, create=False)
        if store is None:
            return  # no bucket, so no key to delete
        try:
            await store.delete(key)
        except Exception as exc:
            if not _bucket_vanished(connection, bucket, exc, was_known):
                raise

    action = f'delete key "{key}" from bucket "{bucket}"'
    jetstream_session().run(action, delete, may_have_happened=True)


@sql_function
def nats_put_binary(bucket: Any, key: Any, data: Any) -> int:
    return put_value("binary", bucket, key, data)


@sql_function
def nats_put_text(bucket: Any, key: Any, data: Any) -> int:
    return put_value("text", bucket, key, data)


@sql_function
def nats_put_json(bucket: Any, key: Any, data: Any) -> int:
    return put_value("json", bucket, key, data)


@sql_function
def nats_put_jsonb(bucket: Any, key: Any, data: Any) -> int:
    return put_value("jsonb", bucket, key, data)


@sql_function
def nats_get_binary(bucket: Any, key: Any) -> Any:
    return get_value("binary", bucket, key)


@sql_function
def nats_get_text(bucket: Any, key: Any) -> Any:
    return get_value("text", bucket, key)


@sql_function
def nats_get_json(bucket: Any, key: Any) -> Any:
    return get_value("json", bucket, key)


@sql_function
def nats_get_jsonb(bucket: Any, key: Any) -> Any:
    return get_value("jsonb", bucket, key)
