"""The Python side of every SQL function of pgnats: ``GD['pgnats']`` is this module.

Each SQL body calls ``GD['pgnats'].<name>(...)``. The functions live in modules by area and
are re-exported here, so this file is the index of the SQL interface.
"""

from __future__ import annotations

from pgnats.backend.core_api import (
    nats_get_server_info,
    nats_publish_binary,
    nats_publish_json,
    nats_publish_jsonb,
    nats_publish_text,
    nats_request_binary,
    nats_request_json,
    nats_request_jsonb,
    nats_request_text,
)
from pgnats.backend.meta_api import fdw_validator, pgnats_version
from pgnats.backend.reload_api import pgnats_reload_conf, pgnats_reload_conf_force

__all__ = [
    "fdw_validator",
    "nats_get_server_info",
    "nats_publish_binary",
    "nats_publish_json",
    "nats_publish_jsonb",
    "nats_publish_text",
    "nats_request_binary",
    "nats_request_json",
    "nats_request_jsonb",
    "nats_request_text",
    "pgnats_reload_conf",
    "pgnats_reload_conf_force",
    "pgnats_version",
]
