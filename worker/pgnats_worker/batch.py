"""A batch of deliveries for one role, grouped by subscription and callback, and how a
failure is described when it is recorded."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from pgnats_worker.model import Delivery, Failure, Target
from pgnats_worker.payloads import PayloadArray

SQLSTATE_ADMIN_SHUTDOWN = "57P01"

OUTCOME_UNKNOWN = Failure(
    sqlstate="08007",  # transaction_resolution_unknown
    message="the connection to PostgreSQL was lost during COMMIT and PostgreSQL can no "
    "longer tell whether the transaction committed; the callback may or may not have run",
)
WORKER_STOPPED = Failure(
    sqlstate=SQLSTATE_ADMIN_SHUTDOWN,
    message="the pgnats worker stopped before this message was processed",
)


@dataclass
class Group:
    """The deliveries of one batch for one subscription and callback, in arrival order."""

    subscription: str
    target: Target
    deliveries: list[Delivery]
    failures: dict[int, Failure] = field(default_factory=dict)

    @property
    def payloads(self) -> PayloadArray:
        return PayloadArray([delivery.payload for delivery in self.deliveries])

    def fail_all(self, failure: Failure) -> None:
        self.failures = dict.fromkeys(range(len(self.deliveries)), failure)


def group_deliveries(batch: list[Delivery]) -> list[Group]:
    groups: dict[tuple[str, int], Group] = {}
    for delivery in batch:
        key = (delivery.subscription, delivery.target.callback)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(delivery.subscription, delivery.target, [])
        group.deliveries.append(delivery)
    return list(groups.values())


def trim_context(context: str | None) -> str | None:
    """The callback's part of an error context, without pgnats' own dispatch frames."""
    if not context:
        return None
    lines = context.splitlines()
    for position, line in enumerate(lines):
        if ".pgnats_call(" in line or "pgnats._dispatch(" in line:
            lines = lines[:position]
            break
    if lines and lines[-1].startswith('SQL statement "SELECT '):
        lines = lines[:-1]
    return "\n".join(lines) or None


def failure_from_error(error: psycopg.Error) -> Failure:
    diag = error.diag
    return Failure(
        sqlstate=diag.sqlstate,
        message=diag.message_primary or str(error),
        detail=diag.message_detail,
        hint=diag.message_hint,
        context=trim_context(diag.context),
    )
