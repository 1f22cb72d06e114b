"""Core NATS from SQL: nats_publish_*, nats_request_* and nats_get_server_info().

Arguments are checked before anything is sent (a bad one is an error and the connection
stays as it was). A publish returns once its frame is in the kernel's socket buffer, with
Nagle off: it has left the backend, nothing waits in a buffer of ours for a later call.
"""

from __future__ import annotations

import json
from typing import Any

from pgnats.backend.core_client import checked_connection
from pgnats.backend.errors import as_plpy_error
from pgnats.backend.payloads import PayloadKind, encode_payload, header_block, parse_headers
from pgnats.errors import InvalidInput, PgnatsError
from pgnats.subjects import validate_publish_subject

# Subjects already checked, with their wire form: a look-up here is much cheaper than
# checking a subject character by character before every publish.
_checked_subjects: dict[str, bytes] = {}
MAX_CHECKED_SUBJECTS = 4096


def _subject_bytes(subject: str | None, what: str) -> bytes:
    if subject is not None:
        wire = _checked_subjects.get(subject)
        if wire is not None:
            return wire
    valid = validate_publish_subject(subject, what)
    if len(_checked_subjects) >= MAX_CHECKED_SUBJECTS:
        _checked_subjects.clear()
    wire = _checked_subjects[valid] = valid.encode("utf-8")
    return wire


def _publish(
    kind: PayloadKind, subject: str, payload: Any, reply: str | None, headers: str | None
) -> None:
    try:
        wire_subject = _subject_bytes(subject, "subject")
        wire_reply = None if reply is None else _subject_bytes(reply, "reply subject")
        data = encode_payload(kind, payload)
        pairs = None if headers is None else parse_headers(headers)
        block = None if pairs is None else header_block(pairs)
        checked_connection().publish(wire_subject, wire_reply, block, data)
    except PgnatsError as exc:
        raise as_plpy_error(exc) from None


def nats_publish_binary(
    subject: str, payload: bytes, reply: str | None, headers: str | None
) -> None:
    _publish("binary", subject, payload, reply, headers)


def nats_publish_text(subject: str, payload: str, reply: str | None, headers: str | None) -> None:
    _publish("text", subject, payload, reply, headers)


def nats_publish_json(subject: str, payload: str, reply: str | None, headers: str | None) -> None:
    _publish("json", subject, payload, reply, headers)


def nats_publish_jsonb(subject: str, payload: str, reply: str | None, headers: str | None) -> None:
    _publish("jsonb", subject, payload, reply, headers)


def _request(kind: PayloadKind, subject: str, payload: Any, timeout_ms: int | None) -> bytes:
    try:
        wire_subject = _subject_bytes(subject, "subject")
        data = encode_payload(kind, payload)
        if timeout_ms is not None and timeout_ms <= 0:
            raise InvalidInput(
                f"timeout must be a positive number of milliseconds, not {timeout_ms}",
                hint="pass NULL for the server's request_timeout option (default 5000 ms)",
            )
        connection = checked_connection()
        if timeout_ms is None:
            timeout_ms = connection.settings.request_timeout_ms
        return connection.request(wire_subject, data, timeout_ms / 1000)
    except PgnatsError as exc:
        raise as_plpy_error(exc) from None


def nats_request_binary(subject: str, payload: bytes, timeout: int | None) -> bytes:
    return _request("binary", subject, payload, timeout)


def nats_request_text(subject: str, payload: str, timeout: int | None) -> bytes:
    return _request("text", subject, payload, timeout)


def nats_request_json(subject: str, payload: str, timeout: int | None) -> bytes:
    return _request("json", subject, payload, timeout)


def nats_request_jsonb(subject: str, payload: str, timeout: int | None) -> bytes:
    return _request("jsonb", subject, payload, timeout)


# Columns of pgnats.server_info and the INFO field each comes from.
_TEXT_COLUMNS = {
    "server_id": "server_id",
    "server_name": "server_name",
    "version": "version",
    "go": "go",
    "host": "host",
    "client_ip": "client_ip",
    "nonce": "nonce",
    "cluster": "cluster",
    "domain": "domain",
    "git_commit": "git_commit",
}
_INT_COLUMNS = {
    "port": "port",
    "max_payload": "max_payload",
    "proto": "proto",
    "client_id": "client_id",
}
# The server leaves these out of INFO when they are false (Go's omitempty).
_BOOL_COLUMNS = {
    "headers": "headers",
    "auth_required": "auth_required",
    "tls_required": "tls_required",
    "tls_verify": "tls_verify",
    "jetstream": "jetstream",
    "lame_duck_mode": "ldm",
}
_JSON_COLUMNS = {"connect_urls": "connect_urls", "ws_connect_urls": "ws_connect_urls"}


def server_info_row(info: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column, field in _TEXT_COLUMNS.items():
        value = info.get(field)
        row[column] = None if value is None or value == "" else str(value)
    for column, field in _INT_COLUMNS.items():
        value = info.get(field)
        row[column] = None if value is None else int(value)
    for column, field in _BOOL_COLUMNS.items():
        row[column] = bool(info.get(field, False))
    for column, field in _JSON_COLUMNS.items():
        value = info.get(field)
        row[column] = None if value is None else json.dumps(value)
    return row


def nats_get_server_info() -> dict[str, Any]:
    """The INFO of this session's connection, after a round trip that proves it works."""
    try:
        connection = checked_connection()
        connection.ping(connection.settings.request_timeout_ms / 1000)
        return server_info_row(connection.info)
    except PgnatsError as exc:
        raise as_plpy_error(exc) from None
