"""The Python side of every SQL function of pgnats: ``GD['pgnats']`` is this module.

Each SQL body calls ``GD['pgnats'].<name>(...)``. The functions live in modules by area and
are re-exported here, so this file is the index of the SQL interface.
"""

from __future__ import annotations

from pgnats.backend import session
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
from pgnats.backend.kv_api import (
    nats_delete_value,
    nats_get_binary,
    nats_get_json,
    nats_get_jsonb,
    nats_get_text,
    nats_put_binary,
    nats_put_json,
    nats_put_jsonb,
    nats_put_text,
)
from pgnats.backend.meta_api import fdw_validator, pgnats_version
from pgnats.backend.object_store_api import (
    nats_delete_file,
    nats_get_file,
    nats_get_file_info,
    nats_get_file_list,
    nats_put_file,
)
from pgnats.backend.reload_api import pgnats_reload_conf, pgnats_reload_conf_force
from pgnats.backend.sql_errors import sql_function
from pgnats.backend.stream_api import (
    nats_publish_binary_stream,
    nats_publish_json_stream,
    nats_publish_jsonb_stream,
    nats_publish_text_stream,
)
from pgnats.backend.subscriptions_api import (
    nats_subscribe,
    nats_unsubscribe,
    validate_subscription,
)

# Every call that talks to NATS starts here, with the caller's current_user (session.py).
act_as = sql_function(session.act_as)

__all__ = [
    "act_as",
    "fdw_validator",
    "nats_delete_file",
    "nats_delete_value",
    "nats_get_binary",
    "nats_get_file",
    "nats_get_file_info",
    "nats_get_file_list",
    "nats_get_json",
    "nats_get_jsonb",
    "nats_get_server_info",
    "nats_get_text",
    "nats_publish_binary",
    "nats_publish_binary_stream",
    "nats_publish_json",
    "nats_publish_json_stream",
    "nats_publish_jsonb",
    "nats_publish_jsonb_stream",
    "nats_publish_text",
    "nats_publish_text_stream",
    "nats_put_binary",
    "nats_put_file",
    "nats_put_json",
    "nats_put_jsonb",
    "nats_put_text",
    "nats_request_binary",
    "nats_request_json",
    "nats_request_jsonb",
    "nats_request_text",
    "nats_subscribe",
    "nats_unsubscribe",
    "pgnats_reload_conf",
    "pgnats_reload_conf_force",
    "pgnats_version",
    "validate_subscription",
]
