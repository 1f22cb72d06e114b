"""Turning SQL arguments into NATS payloads and headers, and stored values back into SQL.

The four SQL flavours (binary, text, json, jsonb) differ only here.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pgnats.errors import InvalidInput, NullInput

PayloadKind = Literal["binary", "text", "json", "jsonb"]


def encode_payload(kind: PayloadKind, value: Any, what: str = "payload") -> bytes:
    """The bytes to send for a SQL value of ``kind`` (PL/Python passes bytea as bytes and
    text, json and jsonb as str)."""
    if value is None:
        raise NullInput(f"{what} must not be NULL")
    if kind == "binary":
        return bytes(value)
    return str(value).encode("utf-8")


def decode_payload(kind: PayloadKind, data: bytes, what: str = "value") -> Any:
    """The SQL value of ``kind`` for stored bytes; a clear error when they do not fit."""
    if kind == "binary":
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{what} is not valid UTF-8 (byte {exc.start}); read it as binary instead"
        ) from None
    if "\x00" in text:
        # PL/Python would silently cut the text at the NUL: PostgreSQL text cannot hold one.
        raise InvalidInput(
            f"{what} contains a NUL byte (byte {text.index(chr(0))}), which text cannot hold; "
            "read it as binary instead"
        )
    if kind in ("json", "jsonb"):
        try:
            json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    return text


Headers = list[tuple[str, str]]


def _check_header_name(name: str) -> None:
    if not name:
        raise InvalidInput("header names must not be empty")
    for ch in name:
        if ch == ":" or ord(ch) <= 32 or ord(ch) >= 127:
            raise InvalidInput(
                f"invalid header name {name!r}: only printable ASCII without ':' or spaces"
            )


def _check_header_value(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(
            f"invalid value for header {name!r}: {json.dumps(value)} is not a string",
            hint='header values are strings or arrays of strings: {"k": "v", "m": ["a", "b"]}',
        )
    if "\r" in value or "\n" in value:
        raise InvalidInput(f"invalid value for header {name!r}: contains CR or LF")
    return value


def _json_kind(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


def parse_headers(headers: str | None) -> Headers | None:
    """Validate a jsonb ``headers`` argument; ``None`` when there are none."""
    if headers is None:
        return None
    try:
        parsed = json.loads(headers)
    except ValueError as exc:
        raise InvalidInput(f"headers are not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidInput(
            f"headers must be a JSON object, not {_json_kind(parsed)}",
            hint='for example {"Content-Type": "application/json"}',
        )
    pairs: Headers = []
    for name, value in parsed.items():
        _check_header_name(name)
        values = value if isinstance(value, list) else [value]
        pairs.extend((name, _check_header_value(name, item)) for item in values)
    return pairs or None


def header_block(pairs: Headers) -> bytes:
    """The NATS/1.0 header block sent before the payload in an HPUB frame."""
    lines = ["NATS/1.0\r\n"] + [f"{name}: {value}\r\n" for name, value in pairs] + ["\r\n"]
    return "".join(lines).encode("utf-8")
