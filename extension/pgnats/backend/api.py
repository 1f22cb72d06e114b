"""The Python side of every SQL function of pgnats, one function per SQL function.

Each SQL body calls ``GD['pgnats'].<name>(...)`` with its arguments; these functions turn
pgnats errors into PostgreSQL errors with the right SQLSTATE.
"""

from __future__ import annotations

import sys
from typing import Any

from pgnats import __version__
from pgnats.backend.errors import as_plpy_error
from pgnats.config import kind_of_catalog, parse_option_list, validate_options
from pgnats.errors import PgnatsError


def fdw_validator(options: list[str] | None, catalog: int) -> None:
    try:
        validate_options(kind_of_catalog(catalog), parse_option_list(options))
    except PgnatsError as exc:
        raise as_plpy_error(exc) from None


def pgnats_version() -> dict[str, Any]:
    import nats  # deferred: it is large, and only this and JetStream calls need it

    return {
        "version": __version__,
        "python_version": sys.version.split()[0],
        "nats_py_version": getattr(nats, "__version__", None) or _nats_py_version(),
    }


def _nats_py_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("nats-py")
    except Exception:
        return None
