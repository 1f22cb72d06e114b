"""What the worker moves around: who receives a subscription's messages, and one message
on its way to one callback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Target:
    """A callback subscribed to a subject, and the role it runs as."""

    callback: int  # pg_proc OID
    callback_name: str  # regprocedure text, for logs and failure rows
    role: int  # pg_authid OID
    role_name: str


@dataclass(slots=True)
class Delivery:
    """One message for one callback. A message for three callbacks is three deliveries
    sharing one payload."""

    subscription: str  # the subscribed subject, maybe with wildcards
    subject: str  # the subject the message was published to
    payload: bytes
    received_at: float  # time.time() when the worker received it
    target: Target


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a delivery did not reach its callback's committed work."""

    sqlstate: str | None
    message: str
    detail: str | None = None
    hint: str | None = None
    context: str | None = None
