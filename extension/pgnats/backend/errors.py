"""Raising pgnats errors as PostgreSQL errors from PL/Python.

PL/Python prefixes an uncaught exception's message with its class name; the class made
here is named ``pgnats`` so that users read ``ERROR:  pgnats: <message>``, and it derives
from ``plpy.Error`` so that PL/Python keeps our SQLSTATE, detail and hint.
"""

from __future__ import annotations

from typing import Any

import plpy

from pgnats.errors import PgnatsError


def _make_error_class() -> type[Any]:
    cls = type("pgnats", (plpy.Error,), {})
    cls.__module__ = "builtins"  # PL/Python prints "pgnats: ..." for builtins classes
    return cls


PlpyPgnatsError = _make_error_class()


def as_plpy_error(exc: PgnatsError) -> BaseException:
    """The PL/Python exception to raise in place of ``exc``."""
    error: Any = PlpyPgnatsError(exc.message)
    error.sqlstate = exc.sqlstate
    if exc.detail is not None:
        error.detail = exc.detail
    if exc.hint is not None:
        error.hint = exc.hint
    return error  # type: ignore[no-any-return]
