"""This session's core NATS connection: made on first use, cached, checked before each use.

Before every use the cached connection reads what the server sent meanwhile. When the server
closed it (restarted, or dropped it after unanswered PINGs while the session was idle) or the
settings changed, a new connection is made, transparently. After an error the connection is
closed and never used again.
"""

from __future__ import annotations

import os

import plpy

from pgnats.backend import session
from pgnats.backend.interrupts import CHECK_INTERVAL, check_for_interrupts
from pgnats.backend.nats_connect import open_connection
from pgnats.backend.nats_connection import NatsConnection
from pgnats.config import ConnectSettings
from pgnats.errors import ConnectionLost

_connection: NatsConnection | None = None
_client_name: str | None = None


def checked_connection() -> NatsConnection:
    """A working connection for the current settings (an existing one when it still is)."""
    settings = session.current_settings()
    connection = _connection
    if connection is not None and connection.settings is settings and connection.is_quiet():
        return connection  # the common case, kept short: it runs before every publish
    return _recheck(settings, connection)


def _recheck(settings: ConnectSettings, connection: NatsConnection | None) -> NatsConnection:
    global _connection
    if connection is not None:
        if connection.settings is not settings:
            if connection.settings == settings:
                connection.settings = settings  # re-read but unchanged: keep the connection
            else:
                connection.close()
        if not connection.closed:
            try:
                connection.read_pending()
            except ConnectionLost:
                pass  # closed by the server; make a new one below
            else:
                return connection
    _connection = None
    _connection = open_connection(
        settings,
        name=client_name(),
        check_interrupts=check_for_interrupts,
        check_interval=CHECK_INTERVAL,
    )
    return _connection


def client_name() -> str:
    """How this session shows in the server's connection list (``nats server report``)."""
    global _client_name
    if _client_name is None:
        database = plpy.execute("SELECT current_database() AS db")[0]["db"]
        _client_name = f"pgnats backend {os.getpid()} ({database})"
    return _client_name


def close_connection() -> None:
    global _connection
    if _connection is not None:
        _connection.close()
        _connection = None


session.register_reset(close_connection)
