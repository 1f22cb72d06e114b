"""The LISTEN/NOTIFY channel between backends and the worker, and its payloads."""

from __future__ import annotations

CHANNEL = "pgnats"

SUBSCRIPTIONS_CHANGED = "subscriptions"  # pgnats.subscriptions changed
RELOAD = "reload"  # re-read the connection settings
RELOAD_FORCE = "reload_force"  # reconnect everything
