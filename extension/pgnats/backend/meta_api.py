"""SQL functions about pgnats itself: the FDW validator and pgnats_version()."""

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
    from importlib.metadata import PackageNotFoundError, version

    try:
        nats_py_version: str | None = version("nats-py")
    except PackageNotFoundError:
        nats_py_version = None
    return {
        "version": __version__,
        "python_version": sys.version.split()[0],
        "nats_py_version": nats_py_version,
    }
