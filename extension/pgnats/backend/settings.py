"""Reading the connection settings of this database from the catalogs, as the current role.

The user mapping comes from ``pg_user_mappings``, so PostgreSQL's own rules decide whose
credentials a role may use: its own mapping (with USAGE on the server), else PUBLIC's.
"""

from __future__ import annotations

from typing import Any

import plpy

from pgnats.config import ConnectSettings, parse_option_list, settings_from_options

SETTINGS_QUERY = """
SELECT s.srvname,
       s.srvoptions,
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

_plan: Any = None


def load_settings() -> ConnectSettings:
    """Settings from this database's pgnats_fdw server, or the defaults when there is none."""
    global _plan
    if _plan is None:
        _plan = plpy.prepare(SETTINGS_QUERY)
    rows = plpy.execute(_plan)
    if len(rows) == 0:
        return settings_from_options(None)
    row = rows[0]
    mapping = row["umoptions"]
    return settings_from_options(
        parse_option_list(row["srvoptions"]),
        parse_option_list(mapping) if mapping is not None else None,
    )
