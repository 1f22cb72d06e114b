"""Reading the connection settings of this database from the catalogs, as the current role."""

from __future__ import annotations

from typing import Any

import plpy

from pgnats.catalog import SETTINGS_QUERY, default_settings, settings_from_row
from pgnats.config import ConnectSettings

_plan: Any = None


def load_settings() -> ConnectSettings:
    """Settings from this database's pgnats_fdw server, or the defaults when there is none."""
    global _plan
    if _plan is None:
        _plan = plpy.prepare(SETTINGS_QUERY)
    rows = plpy.execute(_plan)
    if len(rows) == 0:
        return default_settings()
    return settings_from_row(rows[0]["srvoptions"], rows[0]["umoptions"])
