"""Validation of NATS subjects: the one place both the extension and the worker use.

Rules (from the NATS subject naming documentation): tokens are separated by ``.``,
no token is empty, and no character is whitespace or a control character. ``*``
matches one token and ``>`` the rest; both must be whole tokens, ``>`` only the last.
Publish subjects may not contain wildcards at all.
"""

from __future__ import annotations

from pgnats.errors import InvalidInput, NullInput

# A subject is sent on the protocol's control line, which the server limits to 4096
# bytes by default; keep well inside it so "PUB subject reply size" always fits.
MAX_SUBJECT_BYTES = 1024


def _check_common(subject: str | None, what: str) -> str:
    if subject is None:
        raise NullInput(f"{what} must not be NULL")
    if not isinstance(subject, str):
        raise InvalidInput(f"{what} must be text, not {type(subject).__name__}")
    if subject == "":
        raise InvalidInput(f"{what} must not be empty")
    for ch in subject:
        if ch.isspace() or ord(ch) < 32 or ord(ch) == 127:
            raise InvalidInput(
                f"invalid {what} {subject!r}: contains whitespace or a control character ({ch!r})",
                hint="NATS subjects are dot-separated tokens such as orders.new",
            )
    if len(subject.encode("utf-8")) > MAX_SUBJECT_BYTES:
        raise InvalidInput(f"invalid {what}: longer than {MAX_SUBJECT_BYTES} bytes")
    if "" in subject.split("."):
        raise InvalidInput(
            f"invalid {what} {subject!r}: empty token",
            hint="a subject may not start or end with '.', or contain '..'",
        )
    return subject


def validate_publish_subject(subject: str | None, what: str = "subject") -> str:
    """Return ``subject`` if messages can be published to it; raise otherwise."""
    _check_common(subject, what)
    assert subject is not None
    for token in subject.split("."):
        if "*" in token or ">" in token:
            raise InvalidInput(
                f"invalid {what} {subject!r}: wildcards ('*', '>') are not allowed here",
                hint="wildcards are for subscriptions; publish to a concrete subject",
            )
    return subject


def validate_subscribe_subject(subject: str | None, what: str = "subject") -> str:
    """Return ``subject`` if it can be subscribed to (wildcards allowed); raise otherwise."""
    _check_common(subject, what)
    assert subject is not None
    tokens = subject.split(".")
    for position, token in enumerate(tokens):
        if token in ("*", ">"):
            if token == ">" and position != len(tokens) - 1:
                raise InvalidInput(f"invalid {what} {subject!r}: '>' must be the last token")
            continue
        if "*" in token or ">" in token:
            raise InvalidInput(
                f"invalid {what} {subject!r}: a wildcard must be a whole token",
                hint="write orders.* or orders.>, not orders* or orders.a>",
            )
    return subject


def subject_matches(pattern: str, subject: str) -> bool:
    """True when ``subject`` (no wildcards) is matched by ``pattern`` (wildcards allowed)."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for position, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > position
        if position >= len(subject_tokens):
            return False
        if token != "*" and token != subject_tokens[position]:
            return False
    return len(pattern_tokens) == len(subject_tokens)
