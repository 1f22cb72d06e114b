"""Reading a database's pgnats state as the worker: the NATS settings and the subscriptions."""

from __future__ import annotations

from typing import Any

import psycopg
from pgnats.catalog import SETTINGS_QUERY, default_settings, settings_from_row
from pgnats.config import ConnectSettings

from pgnats_worker.model import Target

DATABASES_QUERY = """
SELECT datname FROM pg_catalog.pg_database
 WHERE datallowconn AND NOT datistemplate
 ORDER BY datname
"""

HAS_EXTENSION_QUERY = "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgnats'"

IS_SUPERUSER_QUERY = "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"

SUBSCRIPTIONS_QUERY = """
SELECT s.subject, s.callback::pg_catalog.oid, s.callback::pg_catalog.text,
       s.role::pg_catalog.oid, r.rolname
  FROM pgnats.subscriptions s
  LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.role::pg_catalog.oid
 ORDER BY s.subject, s.callback::pg_catalog.text
"""

# The NATS queue group of the worker's subscriptions for this database: unique to the
# cluster (its system identifier) and the database, so that two clusters or two databases
# sharing a NATS each get every message, while the old and the new connection of one
# database during a reload never both get the same one.
QUEUE_GROUP_QUERY = """
SELECT 'pgnats.' || s.system_identifier || '.' || d.oid
  FROM pg_catalog.pg_control_system() s, pg_catalog.pg_database d
 WHERE d.datname = pg_catalog.current_database()
"""

Conn = psycopg.AsyncConnection[Any]


async def load_settings(conn: Conn) -> ConnectSettings:
    """Settings of this database's pgnats_fdw server; the defaults when there is none."""
    cursor = await conn.execute(SETTINGS_QUERY)
    row = await cursor.fetchone()
    if row is None:
        return default_settings()
    return settings_from_row(*row)


async def load_queue_group(conn: Conn) -> str:
    cursor = await conn.execute(QUEUE_GROUP_QUERY)
    row = await cursor.fetchone()
    assert row is not None  # the database we are connected to exists
    return str(row[0])


async def load_subscriptions(conn: Conn) -> tuple[dict[str, tuple[Target, ...]], list[str]]:
    """Subject -> callbacks, and a description of each row that cannot be served (its role
    was dropped)."""
    cursor = await conn.execute(SUBSCRIPTIONS_QUERY)
    wanted: dict[str, list[Target]] = {}
    orphans: list[str] = []
    for subject, callback, callback_name, role, role_name in await cursor.fetchall():
        if role_name is None:
            orphans.append(f"{subject} -> {callback_name} (role {role} no longer exists)")
            continue
        wanted.setdefault(subject, []).append(Target(callback, callback_name, role, role_name))
    return {subject: tuple(targets) for subject, targets in wanted.items()}, orphans
