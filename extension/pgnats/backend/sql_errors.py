"""The decorator that makes a Python function the body of a SQL function of pgnats."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from pgnats.backend.errors import as_plpy_error
from pgnats.errors import PgnatsError

P = ParamSpec("P")
R = TypeVar("R")


def sql_function(function: Callable[P, R]) -> Callable[P, R]:
    """pgnats errors leave ``function`` as ``ERROR:  pgnats: <message>`` with their SQLSTATE,
    without a Python traceback in the message."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except PgnatsError as exc:
            raise as_plpy_error(exc) from None

    return wrapper
