"""State kept for the life of a backend session: the role a call runs as, the connection
settings, and the clients that depend on them.

The role. A session's NATS credentials come from the current role's user mapping, and the
current role changes within a session (SET ROLE, SECURITY DEFINER functions). PL/Python
cannot see it without running a query, which would double the cost of a publish, so the SQL
wrappers pass ``current_user`` and every call starts with :func:`act_as`. A role other than
the session user is checked against the real ``current_user`` (one query), because the
internal functions can also be called directly with any role name; the session user itself
needs no check, as a session may always use its own settings.

Settings are read from the catalogs, per role, on first use and again when they are older
than :data:`SETTINGS_MAX_AGE` (so ALTER SERVER in another session is noticed within a
second, without a query per call), or after :func:`invalidate_settings`
(pgnats_reload_conf, or DDL on the server or a user mapping in this session).
Each client (core NATS, nats-py for JetStream) registers a reset hook; the clients compare
the settings they were made with against :func:`current_settings` before each use, so a
call as another role with other credentials gets a connection of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import plpy

from pgnats.backend.settings import load_settings
from pgnats.config import ConnectSettings
from pgnats.errors import PgnatsError

SETTINGS_MAX_AGE = 1.0

_settings: dict[str, tuple[ConnectSettings, float]] = {}
_reset_hooks: list[Callable[[], None]] = []
_role = ""
_session_user: str | None = None
_whoami_plan: Any = None


def _whoami() -> tuple[str, str]:
    global _whoami_plan, _session_user
    if _whoami_plan is None:
        _whoami_plan = plpy.prepare("SELECT current_user AS cu, session_user AS su")
    row = plpy.execute(_whoami_plan)[0]
    _session_user = str(row["su"])
    return str(row["cu"]), _session_user


def act_as(role: str) -> None:
    """This call runs as ``role`` (the caller's ``current_user``)."""
    global _role
    if _session_user is None or role != _session_user:
        current_user, _ = _whoami()
        if role != current_user:
            raise PgnatsError(
                f"pgnats was called for role {role!r} while the current role is {current_user!r}",
                hint="call the public functions, not pgnats._nats_*",
                sqlstate="42501",
            )
    _role = role


def current_settings() -> ConnectSettings:
    now = time.monotonic()
    cached = _settings.get(_role)
    if cached is not None and now - cached[1] <= SETTINGS_MAX_AGE:
        return cached[0]
    settings = load_settings()
    _settings[_role] = (settings, now)
    return settings


def invalidate_settings() -> None:
    _settings.clear()


def register_reset(hook: Callable[[], None]) -> None:
    """``hook`` closes a client; it runs on :func:`reset_clients` (pgnats_reload_conf_force)."""
    if hook not in _reset_hooks:
        _reset_hooks.append(hook)


def reset_clients() -> None:
    invalidate_settings()
    for hook in _reset_hooks:
        hook()
