"""The Python side of every SQL function of pgnats: ``GD['pgnats']`` is this module.

Each SQL body calls ``GD['pgnats'].<name>(...)``. The functions live in modules by area and
are re-exported here, so this file is the index of the SQL interface.
"""

from __future__ import annotations

from pgnats.backend.meta_api import fdw_validator, pgnats_version
from pgnats.backend.subscriptions_api import (
    nats_subscribe,
    nats_unsubscribe,
    validate_subscription,
)

__all__ = [
    "fdw_validator",
    "nats_subscribe",
    "nats_unsubscribe",
    "pgnats_version",
    "validate_subscription",
]
