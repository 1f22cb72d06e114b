"""Validation of JetStream key-value bucket, key, object store and object names.

Checked before anything is sent, so a bad name gets an error that names the rule instead of
an opaque server reply (or, for a key such as ``a..b``, a message that no stream captures).

Rules (NATS ADR-8 key-value, ADR-20 object store, as the Go and Python clients apply them):
- a bucket (key-value) or store (object store) name is ``[A-Za-z0-9_-]+``; it becomes the
  stream name ``KV_<bucket>`` or ``OBJ_<store>``, and stream names are at most 255 bytes;
- a key is ``[-/_=.A-Za-z0-9]+``, does not start or end with ``.``, and (being part of the
  subject ``$KV.<bucket>.<key>``) has no empty token (``..``);
- an object name is any non-empty text (it is base64-encoded into the subject).
"""

from __future__ import annotations

import re

from pgnats.errors import InvalidInput, NullInput
from pgnats.subjects import MAX_SUBJECT_BYTES

MAX_STREAM_NAME_BYTES = 255
KV_STREAM_PREFIX = "KV_"
OBJECT_STREAM_PREFIX = "OBJ_"
MAX_OBJECT_NAME_BYTES = 1024

_BUCKET_RE = re.compile(r"[A-Za-z0-9_-]+")
_KEY_RE = re.compile(r"[-/_=.A-Za-z0-9]+")


def _require_text(value: str | None, what: str) -> str:
    if value is None:
        raise NullInput(f"{what} must not be NULL")
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text, not {type(value).__name__}")
    if value == "":
        raise InvalidInput(f"{what} must not be empty")
    return value


def _validate_store_name(name: str | None, what: str, stream_prefix: str) -> str:
    _require_text(name, what)
    assert name is not None
    if not _BUCKET_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid {what} {name!r}: only letters, digits, '_' and '-' are allowed",
            hint="for example orders_cache or user-files",
        )
    limit = MAX_STREAM_NAME_BYTES - len(stream_prefix)
    if len(name) > limit:
        raise InvalidInput(f"invalid {what}: longer than {limit} characters")
    return name


def validate_bucket_name(bucket: str | None) -> str:
    """Return ``bucket`` if it is a valid key-value bucket name; raise otherwise."""
    return _validate_store_name(bucket, "bucket name", KV_STREAM_PREFIX)


def validate_store_name(store: str | None) -> str:
    """Return ``store`` if it is a valid object store name; raise otherwise."""
    return _validate_store_name(store, "object store name", OBJECT_STREAM_PREFIX)


def validate_key(key: str | None, bucket: str) -> str:
    """Return ``key`` if it is a valid key for ``bucket`` (already validated); raise otherwise."""
    _require_text(key, "key")
    assert key is not None
    if not _KEY_RE.fullmatch(key):
        raise InvalidInput(
            f"invalid key {key!r}: only letters, digits and '-', '/', '_', '=', '.' are allowed",
            hint="for example user.42.profile or config/db=primary",
        )
    if key.startswith(".") or key.endswith(".") or ".." in key:
        raise InvalidInput(
            f"invalid key {key!r}: it may not start or end with '.', or contain '..'",
        )
    subject_bytes = len(f"$KV.{bucket}.{key}")
    if subject_bytes > MAX_SUBJECT_BYTES:
        raise InvalidInput(
            f"invalid key: too long ({len(key)} characters; bucket name and key together "
            f"may have at most {MAX_SUBJECT_BYTES - len('$KV..')} characters)"
        )
    return key


def validate_object_name(name: str | None) -> str:
    """Return ``name`` if it is a valid object (file) name; raise otherwise."""
    _require_text(name, "file name")
    assert name is not None
    if len(name.encode("utf-8")) > MAX_OBJECT_NAME_BYTES:
        raise InvalidInput(f"invalid file name: longer than {MAX_OBJECT_NAME_BYTES} bytes")
    return name
