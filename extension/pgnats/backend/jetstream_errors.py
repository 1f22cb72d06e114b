"""nats-py's exceptions as pgnats errors, and which of them leave the connection usable.

An exception that is the server's complete answer (an API error, "no responders", a payload
refused before sending) leaves the connection as good as it was. Anything else (a timeout, a
lost connection, a cancel, a surprise) means the connection's state is unknown, and the
client is discarded without sending what it may still have buffered.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.errors
import nats.js.errors

from pgnats.errors import (
    ConnectionLost,
    InvalidInput,
    JetStreamUnavailable,
    NatsTimeout,
    PayloadTooLarge,
    PgnatsError,
)

# JetStream API error codes (nats-server's errors.json) that mean "no JetStream here".
JS_NOT_ENABLED_FOR_ACCOUNT = 10039
JS_NOT_ENABLED = 10076
STREAM_NOT_FOUND = 10059
STREAM_NAME_IN_USE = 10058

_ANSWERS: tuple[type[BaseException], ...] = (
    nats.js.errors.APIError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.NoRespondersError,
    nats.errors.MaxPayloadError,
    nats.errors.BadHeaderError,
    PgnatsError,
)

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
)


class IncompleteDownload(Exception):
    """A downloaded object did not match its size or digest (the download was cut short)."""


@dataclass(frozen=True)
class Situation:
    """What was being done, for the error message."""

    action: str  # e.g. 'publish to subject "orders.new"'
    server: str  # the server(s), as ConnectSettings.describe() gives them
    timeout_ms: int
    jetstream_enabled: bool | None = None  # from the server's INFO, when connected
    max_payload: int | None = None
    # For writes: a timeout or lost connection leaves it unknown whether the write happened.
    may_have_happened: bool = False

    def outcome(self) -> str:
        return "; it may or may not have been stored" if self.may_have_happened else ""


def keeps_connection(exc: BaseException) -> bool:
    """True when ``exc`` is a complete answer from the server (the connection is fine)."""
    return isinstance(exc, _ANSWERS) and not isinstance(exc, _CONNECTION_ERRORS)


def is_stream_missing(exc: BaseException) -> bool:
    """True when ``exc`` says nothing (no stream) answers for the subject or stream."""
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        err_code = _err_code(exc)
        return err_code == STREAM_NOT_FOUND or (
            isinstance(exc, nats.js.errors.ServiceUnavailableError) and err_code is None
        )
    return False


def is_name_in_use(exc: BaseException) -> bool:
    """True when a stream could not be created because one of that name exists (another
    client created the bucket or store a moment ago, with a configuration of its own)."""
    return isinstance(exc, nats.js.errors.APIError) and _err_code(exc) == STREAM_NAME_IN_USE


def jetstream_unavailable(situation: Situation) -> JetStreamUnavailable:
    return JetStreamUnavailable(
        f"{situation.action}: JetStream is not enabled on the NATS server at {situation.server}",
        hint="start nats-server with -js (or jetstream {} in its configuration), "
        "and enable JetStream for the account",
    )


def translate(exc: BaseException, situation: Situation) -> PgnatsError:
    """The pgnats error to raise for ``exc``, raised while doing ``situation.action``."""
    if isinstance(exc, PgnatsError):
        return exc
    action = situation.action
    if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError is one too
        return NatsTimeout(
            f"{action}: no answer from NATS within {situation.timeout_ms} ms{situation.outcome()}",
            hint="the server option request_timeout (milliseconds) sets this limit",
        )
    if isinstance(exc, nats.js.errors.APIError) and _err_code(exc) in (
        JS_NOT_ENABLED_FOR_ACCOUNT,
        JS_NOT_ENABLED,
    ):
        return jetstream_unavailable(situation)
    if is_stream_missing(exc):
        if situation.jetstream_enabled is False:
            return jetstream_unavailable(situation)
        return JetStreamUnavailable(
            f"{action}: no answer from JetStream (no responders)",
            hint="is JetStream enabled for this account, and does its stream exist?",
        )
    if isinstance(exc, nats.errors.MaxPayloadError):
        limit = f" ({situation.max_payload} bytes)" if situation.max_payload else ""
        return PayloadTooLarge(
            f"{action}: the payload is larger than the server's max_payload{limit}"
        )
    if isinstance(exc, nats.errors.BadHeaderError):
        return InvalidInput(
            f"invalid header name {exc.key!r}: NATS header names are letters, digits and "
            "!#$%&'*+-.^_`|~"
        )
    if isinstance(exc, nats.js.errors.APIError):
        err_code = _err_code(exc)
        code = f"error {err_code}" if err_code else f"status {getattr(exc, 'code', None)}"
        description = getattr(exc, "description", None) or _describe(exc)
        return PgnatsError(f"{action}: JetStream refused it: {description} ({code})")
    if isinstance(exc, _CONNECTION_ERRORS):
        return ConnectionLost(
            f"{action}: the connection to NATS at {situation.server} was lost "
            f"({_describe(exc)}){situation.outcome()}"
        )
    if isinstance(exc, IncompleteDownload):
        return ConnectionLost(f"{action}: {exc}")
    return PgnatsError(f"{action}: {_describe(exc)}")


def _err_code(exc: BaseException) -> int | None:
    # Some nats-py subclasses of APIError never set the dataclass fields.
    value = getattr(exc, "err_code", None)
    return value if isinstance(value, int) else None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__
