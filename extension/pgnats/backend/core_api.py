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


# The INFO fields that make the columns of pgnats.server_info, by type. Each column has its
# field's name, but lame_duck_mode (field "ldm").
_TEXT_COLUMNS = (
    "server_id", "server_name", "version", "go", "host", "client_ip", "nonce", "cluster",
    "domain", "git_commit",
)  # fmt: skip
_INT_COLUMNS = ("port", "max_payload", "proto", "client_id")
# The server leaves these out of INFO when they are false (Go's omitempty).
_BOOL_COLUMNS = ("headers", "auth_required", "tls_required", "tls_verify", "jetstream", "ldm")
_JSON_COLUMNS = ("connect_urls", "ws_connect_urls")
_COLUMN_NAMES = {"ldm": "lame_duck_mode"}


def _server_info_row(info: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for field in _TEXT_COLUMNS:
        value = info.get(field)
        row[field] = None if value is None or value == "" else str(value)
    for field in _INT_COLUMNS:
        value = info.get(field)
        row[field] = None if value is None else int(value)
    for field in _BOOL_COLUMNS:
        row[_COLUMN_NAMES.get(field, field)] = bool(info.get(field, False))
    for field in _JSON_COLUMNS:
        value = info.get(field)
        row[field] = None if value is None else json.dumps(value)
    return row


def nats_get_server_info() -> dict[str, Any]:
    """The INFO of this session's connection, after a round trip that proves it works."""
    try:
        connection = checked_connection()
        connection.ping(connection.settings.request_timeout_ms / 1000)
        return _server_info_row(connection.info)
    except PgnatsError as exc:
        raise as_plpy_error(exc) from None
