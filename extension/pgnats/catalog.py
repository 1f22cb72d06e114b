"""Where a database keeps its pgnats connection settings, read the same way by the backend
(as the calling role) and by the worker (as its own role).

The user mapping comes from ``pg_user_mappings``, so PostgreSQL's own rules decide whose
credentials a role may use: its own mapping (with USAGE on the server), else PUBLIC's.
"""

from __future__ import annotations

from collections.abc import Sequence

from pgnats.config import ConnectSettings, parse_option_list, settings_from_options

# One row (server options, user mapping options) when the database has a pgnats_fdw server.
SETTINGS_QUERY = """
SELECT s.srvoptions,
       (SELECT um.umoptions
          FROM pg_catalog.pg_user_mappings um
         WHERE um.srvid = s.oid
           AND um.umuser IN (0, (SELECT r.oid FROM pg_catalog.pg_roles r
                                  WHERE r.rolname = current_user))
         ORDER BY um.umuser DESC
         LIMIT 1) AS umoptions
  FROM pg_catalog.pg_foreign_server s
  JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw
 WHERE w.fdwname = 'pgnats_fdw'
"""


def settings_from_row(
    server_options: Sequence[str] | None, mapping_options: Sequence[str] | None
) -> ConnectSettings:
    """Settings from a row of :data:`SETTINGS_QUERY`."""
    return settings_from_options(
        parse_option_list(server_options),
        parse_option_list(mapping_options) if mapping_options is not None else None,
    )


def default_settings() -> ConnectSettings:
    """Settings when the database has no pgnats_fdw server."""
    return settings_from_options(None)
