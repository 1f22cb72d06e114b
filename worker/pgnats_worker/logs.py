"""Log lines: one per event, prefixed ``PGNATS``, naming database, subject and callback.

``log_event(logging.INFO, "subscribed", database="app", subject="orders.*",
callback="f(bytea)")`` writes::

    2025-01-01 12:00:00,000 INFO PGNATS database=app subject=orders.* callback=f(bytea): subscribed
"""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger("pgnats_worker")

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py reports through our callbacks; its own logger would repeat them.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    # psycopg warns about every aborted pipeline; a failed batch is expected and handled.
    logging.getLogger("psycopg").setLevel(logging.ERROR)


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(ch.isspace() or ch in '"=' for ch in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def describe(error: BaseException) -> str:
    """An error for a log line: libpq's primary message (not its CONTEXT, which can quote
    a whole function body), else the exception's text."""
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return str(primary) if primary else str(error) or repr(error)


def log_event(level: int, message: str, **context: object) -> None:
    fields = " ".join(
        f"{key}={_quote(value)}" for key, value in context.items() if value is not None
    )
    # One line per event, even for libpq's multi-line error messages.
    message = " ".join(message.split())
    logger.log(level, "PGNATS %s%s%s", fields, ": " if fields else "", message)


class RateLimit:
    """Allows ``burst`` events per ``period`` seconds and counts the ones it holds back, to
    be reported in one line once their window has ended (:meth:`take_suppressed`)."""

    def __init__(self, burst: int = 10, period: float = 10.0) -> None:
        self.burst = burst
        self.period = period
        self._window_start = -period
        self._count = 0
        self._held = 0  # held back in the current window
        self._to_report = 0  # held back in windows that have ended

    def _roll(self, now: float) -> bool:
        if now - self._window_start < self.period:
            return False
        self._to_report += self._held
        self._held = 0
        return True

    def allow(self) -> bool:
        now = time.monotonic()
        if self._roll(now):
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count <= self.burst:
            return True
        self._held += 1
        return False

    def take_suppressed(self) -> int:
        """How many were held back in windows that have ended since the last call."""
        self._roll(time.monotonic())
        count, self._to_report = self._to_report, 0
        return count
