"""Subject validation, shared by the extension and the worker (plain Python)."""

from __future__ import annotations

import pytest
from pgnats.errors import InvalidInput, NullInput
from pgnats.subjects import (
    subject_matches,
    validate_publish_subject,
    validate_subscribe_subject,
)


@pytest.mark.parametrize("subject", ["a", "orders.new", "a.b.c.d", "ünïcode.ok", "a-b_c.$x"])
def test_valid_publish_subjects(subject: str) -> None:
    assert validate_publish_subject(subject) == subject


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ("", "must not be empty"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\r\nb", "whitespace"),
        ("a..b", "empty token"),
        (".a", "empty token"),
        ("a.", "empty token"),
        ("a.*", "wildcards"),
        ("a.>", "wildcards"),
        ("a*", "wildcards"),
        ("x" * 1025, "longer than"),
    ],
)
def test_invalid_publish_subjects(subject: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_publish_subject(subject)


def test_null_subject() -> None:
    with pytest.raises(NullInput, match="must not be NULL"):
        validate_publish_subject(None)
    with pytest.raises(NullInput):
        validate_subscribe_subject(None)


@pytest.mark.parametrize("subject", ["a.*", "a.>", "*", ">", "a.*.c", "*.*.>"])
def test_valid_subscribe_subjects(subject: str) -> None:
    assert validate_subscribe_subject(subject) == subject


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ("a.>.b", "must be the last"),
        ("a*", "whole token"),
        ("a.b>", "whole token"),
        ("a..*", "empty"),
    ],
)
def test_invalid_subscribe_subjects(subject: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_subscribe_subject(subject)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("*.b", "a.b", True),
        ("a.b", "a.c", False),
    ],
)
def test_subject_matches(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected
