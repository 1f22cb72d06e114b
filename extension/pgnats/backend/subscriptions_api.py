"""SQL functions for subscriptions: nats_subscribe, nats_unsubscribe, and the checks they share
with the trigger on pgnats.subscriptions (pgnats._validate_subscription).

The rows are the whole interface to the worker: it LISTENs on channel ``pgnats``, and a
trigger on the table notifies it when a transaction that changed them commits.
"""

from __future__ import annotations

from typing import Any

import plpy

from pgnats.backend.errors import as_plpy_error
from pgnats.errors import InvalidInput, NullInput, PgnatsError
from pgnats.subjects import validate_subscribe_subject

BYTEA_OID = 17
SQLSTATE_UNDEFINED_FUNCTION = "42883"
SQLSTATE_INSUFFICIENT_PRIVILEGE = "42501"

_KIND_NAMES = {"a": "an aggregate", "w": "a window function", "p": "a procedure"}

_FUNCTION_QUERY = """
SELECT p.oid::pg_catalog.regprocedure::text AS signature,
       p.prokind::text AS kind,
       p.proargtypes::pg_catalog.oid[] AS argtypes,
       pg_catalog.has_function_privilege($2, p.oid, 'EXECUTE') AS can_execute,
       pg_catalog.quote_ident(r.rolname) AS role_name
  FROM pg_catalog.pg_proc p, pg_catalog.pg_roles r
 WHERE p.oid = $1 AND r.oid = $2
"""

_INSERT = """
INSERT INTO pgnats.subscriptions (subject, callback, role)
VALUES ($1, $2::pg_catalog.regprocedure, $3::pg_catalog.regrole)
ON CONFLICT (subject, callback) DO NOTHING
RETURNING 1
"""

_EXISTING = """
SELECT role::text AS role, role = $3::pg_catalog.regrole AS own
  FROM pgnats.subscriptions
 WHERE subject = $1 AND callback = $2::pg_catalog.regprocedure
"""

_DELETE = """
DELETE FROM pgnats.subscriptions
 WHERE subject = $1 AND callback = $2::pg_catalog.regprocedure
RETURNING 1
"""

_CURRENT_ROLE = "SELECT oid, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"

_SIGNATURE = "SELECT $1::pg_catalog.regprocedure::text AS signature"

_plans: dict[str, Any] = {}


def _plan(name: str, query: str, types: list[str]) -> Any:
    plan = _plans.get(name)
    if plan is None:
        plan = _plans[name] = plpy.prepare(query, types)
    return plan


def _current_role() -> tuple[int, bool]:
    """The current role's OID, and whether it is a superuser."""
    row = plpy.execute(_plan("role", _CURRENT_ROLE, []))[0]
    return int(row["oid"]), bool(row["rolsuper"])


def _require_callback(callback: int | None) -> int:
    if callback is None:
        raise NullInput(
            "callback must not be NULL",
            hint="pass the function as 'my_function'::regproc",
        )
    return int(callback)


def _check(
    subject: str | None, callback: int | None, role: int, *, check_privilege: bool = True
) -> tuple[str, str]:
    """Raise a PgnatsError when the subscription is not acceptable; else (subject, signature)."""
    subject = validate_subscribe_subject(subject)
    callback = _require_callback(callback)
    rows = plpy.execute(_plan("function", _FUNCTION_QUERY, ["oid", "oid"]), [callback, role])
    if len(rows) == 0:
        raise PgnatsError(
            f"callback function with OID {callback} does not exist",
            sqlstate=SQLSTATE_UNDEFINED_FUNCTION,
        )
    row = rows[0]
    signature = str(row["signature"])
    shape_hint = "a callback looks like: CREATE FUNCTION f(payload bytea) RETURNS void ..."
    if row["kind"] != "f":
        raise InvalidInput(
            f"callback {signature} is {_KIND_NAMES.get(row['kind'], 'not a function')}; "
            "it must be a function taking exactly one bytea argument",
            hint=shape_hint,
        )
    if list(row["argtypes"]) != [BYTEA_OID]:
        raise InvalidInput(
            f"callback {signature} must take exactly one argument, of type bytea (the payload)",
            hint=shape_hint,
        )
    if check_privilege and not row["can_execute"]:
        raise PgnatsError(
            f"permission denied for function {signature}: role {row['role_name']} "
            "may not execute it",
            sqlstate=SQLSTATE_INSUFFICIENT_PRIVILEGE,
            hint="the callback runs with the privileges of the role that subscribed it",
        )
    return subject, signature


def validate_subscription(subject: str | None, callback: int | None, role: int | None) -> None:
    """The checks of the BEFORE INSERT OR UPDATE trigger on pgnats.subscriptions.

    Rows a superuser writes skip the privilege check: pg_restore loads the rows before it
    restores GRANTs, and a superuser may set up a subscription for any role (if the role
    cannot execute the function, each message is recorded as a failure).
    """
    try:
        _, superuser = _current_role()
        if role is None:
            raise NullInput("role must not be NULL")
        _check(subject, callback, int(role), check_privilege=not superuser)
    except PgnatsError as exc:
        raise as_plpy_error(exc) from None


def nats_subscribe(subject: str | None, callback: int | None) -> None:
    """Subscribe ``callback`` to ``subject`` for the current role; a second call is a no-op."""
    try:
        role, _ = _current_role()
        subject, signature = _check(subject, callback, role)
        assert callback is not None
        inserted = plpy.execute(
            _plan("insert", _INSERT, ["text", "oid", "oid"]), [subject, callback, role]
        )
        if len(inserted) == 0:
            existing = plpy.execute(
                _plan("existing", _EXISTING, ["text", "oid", "oid"]), [subject, callback, role]
            )
            if existing and not existing[0]["own"]:
                plpy.notice(
                    f"pgnats: {signature} is already subscribed to {subject!r} "
                    f"by role {existing[0]['role']}; it runs with that role's privileges"
                )
    except PgnatsError as exc:
        raise as_plpy_error(exc) from None


def nats_unsubscribe(subject: str | None, callback: int | None) -> None:
    """Remove the subscription of ``callback`` to ``subject``; a missing one is a notice."""
    try:
        subject = validate_subscribe_subject(subject)
        callback = _require_callback(callback)
        role, _ = _current_role()
        deleted = plpy.execute(_plan("delete", _DELETE, ["text", "oid"]), [subject, callback])
        if len(deleted) > 0:
            return
        existing = plpy.execute(
            _plan("existing", _EXISTING, ["text", "oid", "oid"]), [subject, callback, role]
        )
        if existing and not existing[0]["own"]:
            raise PgnatsError(
                f"permission denied: the subscription to {subject!r} belongs to role "
                f"{existing[0]['role']}",
                sqlstate=SQLSTATE_INSUFFICIENT_PRIVILEGE,
                hint="only the role that subscribed (or a superuser) may unsubscribe",
            )
        signature = plpy.execute(_plan("signature", _SIGNATURE, ["oid"]), [callback])[0]
        plpy.notice(
            f"pgnats: {signature['signature']} is not subscribed to {subject!r}; nothing to do"
        )
    except PgnatsError as exc:
        raise as_plpy_error(exc) from None
