"""State kept for the life of a backend session: the connection settings, and the clients
that depend on them.

Settings are read from the catalogs on first use and again when they are older than
:data:`SETTINGS_MAX_AGE` (so ALTER SERVER in another session is noticed within a second,
without a query per call), or after :func:`invalidate_settings` (pgnats_reload_conf).
Each client (core NATS, nats-py for JetStream) registers a reset hook; the clients compare
the settings they were made with against :func:`current_settings` before each use.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pgnats.backend.settings import load_settings
from pgnats.config import ConnectSettings

SETTINGS_MAX_AGE = 1.0

_settings: ConnectSettings | None = None
_loaded_at = 0.0
_reset_hooks: list[Callable[[], None]] = []


def current_settings() -> ConnectSettings:
    global _settings, _loaded_at
    now = time.monotonic()
    if _settings is None or now - _loaded_at > SETTINGS_MAX_AGE:
        _settings = load_settings()
        _loaded_at = now
    return _settings


def invalidate_settings() -> None:
    global _settings
    _settings = None


def register_reset(hook: Callable[[], None]) -> None:
    """``hook`` closes a client; it runs on :func:`reset_clients` (pgnats_reload_conf_force)."""
    if hook not in _reset_hooks:
        _reset_hooks.append(hook)


def reset_clients() -> None:
    invalidate_settings()
    for hook in _reset_hooks:
        hook()
