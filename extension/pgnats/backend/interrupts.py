"""Letting PostgreSQL interrupt Python code.

PostgreSQL does not interrupt a running PL/Python call: a cancel request or an expired
statement_timeout only sets a flag that PostgreSQL acts on at its next CHECK_FOR_INTERRUPTS.
Running any SPI statement reaches that check, so code that waits (a request, a JetStream
ack) calls :func:`check_for_interrupts` every :data:`CHECK_INTERVAL` seconds. When a cancel
is pending it raises ``plpy.SPIError`` (SQLSTATE 57014); let it propagate.
"""

from __future__ import annotations

from typing import Any

import plpy

# Waits are cut into slices this long, so a cancel takes effect within about this time.
CHECK_INTERVAL = 0.05

_plan: Any = None


def check_for_interrupts() -> None:
    global _plan
    if _plan is None:
        _plan = plpy.prepare("SELECT 1")
    plpy.execute(_plan)
