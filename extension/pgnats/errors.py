"""Errors raised by pgnats code, each with the SQLSTATE a SQL caller sees.

Plain Python, no ``plpy``: the worker uses the same classes. Inside a backend,
``pgnats.backend.errors`` turns them into PL/Python errors that keep the SQLSTATE.
"""

from __future__ import annotations

# SQLSTATE class "PN" is pgnats' own, for NATS conditions PostgreSQL has no code for.
SQLSTATE_NATS_ERROR = "PN000"
SQLSTATE_NATS_TIMEOUT = "PN001"
SQLSTATE_NO_RESPONDERS = "PN002"
SQLSTATE_NO_STREAM = "PN003"
SQLSTATE_JETSTREAM_UNAVAILABLE = "PN004"
SQLSTATE_NOT_FOUND = "PN005"


class PgnatsError(Exception):
    """Base class: a message for the user, plus SQLSTATE, detail and hint."""

    sqlstate = SQLSTATE_NATS_ERROR

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint
        if sqlstate is not None:
            self.sqlstate = sqlstate


class InvalidInput(PgnatsError):
    """A value given by the user is not acceptable (invalid_parameter_value)."""

    sqlstate = "22023"


class NullInput(InvalidInput):
    """A required argument is NULL (null_value_not_allowed)."""

    sqlstate = "22004"


class InvalidOption(PgnatsError):
    """A foreign server or user mapping option is unknown or has a bad value."""

    sqlstate = "HV00D"  # fdw_invalid_option_name; bad values use HV024 below


class InvalidOptionValue(InvalidOption):
    sqlstate = "HV024"  # fdw_invalid_attribute_value


class PayloadTooLarge(InvalidInput):
    sqlstate = "54000"  # program_limit_exceeded


class ConnectFailed(PgnatsError):
    """No connection to any NATS server could be made (sqlclient_unable_to_establish...)."""

    sqlstate = "08001"


class ConnectionLost(PgnatsError):
    sqlstate = "08006"


class NatsTimeout(PgnatsError):
    sqlstate = SQLSTATE_NATS_TIMEOUT


class NoResponders(PgnatsError):
    sqlstate = SQLSTATE_NO_RESPONDERS


class NoStream(PgnatsError):
    sqlstate = SQLSTATE_NO_STREAM


class JetStreamUnavailable(PgnatsError):
    sqlstate = SQLSTATE_JETSTREAM_UNAVAILABLE


class NotFound(PgnatsError):
    sqlstate = SQLSTATE_NOT_FOUND
