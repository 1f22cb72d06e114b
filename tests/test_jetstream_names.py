"""Bucket, key, object store and file name rules (plain Python; SQL errors in test_kv.py and
test_object_store.py)."""

from __future__ import annotations

import pytest
from pgnats.errors import InvalidInput, NullInput
from pgnats.jetstream_names import (
    validate_bucket_name,
    validate_key,
    validate_object_name,
    validate_store_name,
)


@pytest.mark.parametrize("name", ["a", "orders", "user-files", "A_b-9", "x" * 252])
def test_valid_bucket_names(name: str) -> None:
    assert validate_bucket_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        ("a b", "only letters, digits, '_' and '-'"),
        ("a.b", "only letters"),
        ("a*", "only letters"),
        ("a>", "only letters"),
        ("ünï", "only letters"),
        ("x" * 253, "longer than 252"),
    ],
)
def test_invalid_bucket_names(name: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_bucket_name(name)


def test_store_names_leave_room_for_the_obj_prefix() -> None:
    assert validate_store_name("x" * 251) == "x" * 251
    with pytest.raises(InvalidInput, match="longer than 251"):
        validate_store_name("x" * 252)


def test_null_names() -> None:
    with pytest.raises(NullInput, match="bucket name must not be NULL"):
        validate_bucket_name(None)
    with pytest.raises(NullInput, match="object store name must not be NULL"):
        validate_store_name(None)
    with pytest.raises(NullInput, match="key must not be NULL"):
        validate_key(None, "b")
    with pytest.raises(NullInput, match="file name must not be NULL"):
        validate_object_name(None)


@pytest.mark.parametrize("key", ["k", "a.b.c", "user/42", "x=y", "-_", "A9"])
def test_valid_keys(key: str) -> None:
    assert validate_key(key, "bucket") == key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "must not be empty"),
        ("a b", "only letters, digits"),
        ("a*", "only letters"),
        ("a>", "only letters"),
        ("a:b", "only letters"),
        (".a", "start or end with '.'"),
        ("a.", "start or end with '.'"),
        ("a..b", "contain '..'"),
        ("k" * 1100, "too long"),
    ],
)
def test_invalid_keys(key: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_key(key, "bucket")


@pytest.mark.parametrize("name", ["a.txt", "dir/file name.pdf", "ünïcode ✓", "."])
def test_valid_object_names(name: str) -> None:
    assert validate_object_name(name) == name


def test_invalid_object_names() -> None:
    with pytest.raises(InvalidInput, match="must not be empty"):
        validate_object_name("")
    with pytest.raises(InvalidInput, match="longer than 1024 bytes"):
        validate_object_name("é" * 513)
