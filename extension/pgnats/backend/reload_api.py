"""pgnats_reload_conf() and pgnats_reload_conf_force(): this session, and the worker."""

from __future__ import annotations

from typing import Any

import plpy

from pgnats import notifications
from pgnats.backend import session

_notify_plan: Any = None


def _notify_worker(payload: str) -> None:
    """Tell the worker (delivered when the calling transaction commits, as NOTIFY is)."""
    global _notify_plan
    if _notify_plan is None:
        _notify_plan = plpy.prepare("SELECT pg_catalog.pg_notify($1, $2)", ["text", "text"])
    plpy.execute(_notify_plan, [notifications.CHANNEL, payload])


def pgnats_reload_conf() -> None:
    """Settings are read again on next use; connections whose settings changed are re-made."""
    session.invalidate_settings()
    _notify_worker(notifications.RELOAD)


def pgnats_reload_conf_force() -> None:
    """Every connection of this session is closed and re-made on next use."""
    session.reset_clients()
    _notify_worker(notifications.RELOAD_FORCE)
