"""Connection settings: the options of a ``pgnats_fdw`` server and user mapping.

This module is the only place that knows the option names and their rules. The FDW
validator calls :func:`validate_options`; the backend and the worker call
:func:`settings_from_options` and then use :class:`ConnectSettings` (directly, or
through :meth:`ConnectSettings.nats_connect_kwargs` for nats-py).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pgnats.errors import InvalidOption, InvalidOptionValue
from pgnats.subjects import validate_publish_subject

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4222
DEFAULT_URL = f"nats://{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_CONNECT_TIMEOUT_MS = 2000
DEFAULT_REQUEST_TIMEOUT_MS = 5000

SERVER_OPTIONS = frozenset(
    {
        "nats_url",
        "host",
        "port",
        "tls_ca_path",
        "tls_cert_path",
        "tls_key_path",
        "capacity",
        "notify_subject",
        "connect_timeout",
        "request_timeout",
    }
)
USER_MAPPING_OPTIONS = frozenset({"user", "password", "token", "creds_path", "nkey_seed_path"})

URL_SCHEMES = ("nats", "tls")

# Catalog OIDs PostgreSQL passes to an FDW validator to say which object is checked.
CATALOG_WRAPPER = 2328  # pg_foreign_data_wrapper
CATALOG_SERVER = 1417  # pg_foreign_server
CATALOG_USER_MAPPING = 1418  # pg_user_mapping

OptionKind = Literal["wrapper", "server", "user_mapping", "other"]


_CATALOG_KINDS: dict[int, OptionKind] = {
    CATALOG_WRAPPER: "wrapper",
    CATALOG_SERVER: "server",
    CATALOG_USER_MAPPING: "user_mapping",
}


def kind_of_catalog(catalog_oid: int) -> OptionKind:
    return _CATALOG_KINDS.get(catalog_oid, "other")


@dataclass(frozen=True)
class Endpoint:
    """One NATS server address from the settings."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls' if self.tls else 'nats'}://{host}:{self.port}"


@dataclass(frozen=True)
class ConnectSettings:
    """Everything needed to connect to NATS, already validated."""

    endpoints: tuple[Endpoint, ...] = (Endpoint(DEFAULT_HOST, DEFAULT_PORT, False),)
    tls_ca_path: str | None = None
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_path: str | None = None
    nkey_seed_path: str | None = None
    capacity: int | None = None
    notify_subject: str | None = None
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS

    @property
    def servers(self) -> list[str]:
        return [endpoint.url for endpoint in self.endpoints]

    @property
    def tls_required(self) -> bool:
        """TLS is asked for by a tls:// URL or by any TLS file option."""
        return any(e.tls for e in self.endpoints) or any(
            (self.tls_ca_path, self.tls_cert_path, self.tls_key_path)
        )

    @property
    def has_credentials(self) -> bool:
        return any((self.user, self.token, self.creds_path, self.nkey_seed_path))

    def describe(self) -> str:
        """The servers, for log lines and error messages (never credentials)."""
        return ",".join(self.servers)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls_required:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca_path)
        if self.tls_cert_path:
            context.load_cert_chain(self.tls_cert_path, self.tls_key_path)
        return context

    def nats_connect_kwargs(self) -> dict[str, Any]:
        """Arguments for ``nats.connect`` (connection identity only, no reconnect policy)."""
        kwargs: dict[str, Any] = {
            "servers": self.servers,
            "connect_timeout": self.connect_timeout_ms / 1000,
        }
        context = self.ssl_context()
        if context is not None:
            kwargs["tls"] = context
        if self.user is not None:
            kwargs["user"] = self.user
            kwargs["password"] = self.password
        if self.token is not None:
            kwargs["token"] = self.token
        if self.creds_path is not None:
            kwargs["user_credentials"] = self.creds_path
        if self.nkey_seed_path is not None:
            kwargs["nkeys_seed"] = self.nkey_seed_path
        return kwargs


def parse_option_list(options: Iterable[str] | None) -> dict[str, str]:
    """Turn PostgreSQL's ``{key=value,...}`` option array into a dict."""
    result: dict[str, str] = {}
    for item in options or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidOption(f'malformed option "{item}"')
        result[key] = value
    return result


def _positive_int(name: str, value: str, maximum: int = 2**31 - 1) -> int:
    text = value.strip()
    if not text.isdigit():
        raise InvalidOptionValue(
            f'invalid value for option "{name}": "{value}" is not a positive integer'
        )
    number = int(text)
    if not 1 <= number <= maximum:
        raise InvalidOptionValue(
            f'invalid value for option "{name}": {number} is out of range (1..{maximum})'
        )
    return number


def _parse_port(name: str, value: str) -> int:
    return _positive_int(name, value, maximum=65535)


def _parse_host(name: str, value: str) -> str:
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(ch.isspace() or ch in "/@?#[]" for ch in host):
        raise InvalidOptionValue(f'invalid value for option "{name}": "{value}" is not a host name')
    return host


def _parse_url(name: str, url: str) -> Endpoint:
    text = url.strip()
    if "://" not in text:
        text = "nats://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidOptionValue(
            f'invalid value for option "{name}": "{url}" is not a valid URL ({exc})'
        ) from None
    if parts.scheme not in URL_SCHEMES:
        raise InvalidOptionValue(
            f'invalid value for option "{name}": "{url}" has scheme "{parts.scheme}"',
            hint="use nats://host:port or tls://host:port",
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidOptionValue(
            f'invalid value for option "{name}": credentials in the URL are not allowed',
            hint="server options are readable by every role; put credentials in "
            "CREATE USER MAPPING ... OPTIONS (user '...', password '...')",
        )
    if not parts.hostname:
        raise InvalidOptionValue(f'invalid value for option "{name}": "{url}" has no host')
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidOptionValue(
            f'invalid value for option "{name}": "{url}" must be scheme://host:port only'
        )
    host = _parse_host(name, parts.hostname)
    return Endpoint(host, port if port is not None else DEFAULT_PORT, parts.scheme == "tls")


def _parse_path(name: str, value: str) -> str:
    if not value.strip():
        raise InvalidOptionValue(f'invalid value for option "{name}": the path is empty')
    return value


def _reject_unknown(options: Mapping[str, str], allowed: frozenset[str], where: str) -> None:
    for key in options:
        if key in allowed:
            continue
        if key in USER_MAPPING_OPTIONS:
            raise InvalidOption(
                f'option "{key}" belongs in a user mapping, not in {where}',
                hint="CREATE USER MAPPING FOR CURRENT_USER SERVER ... OPTIONS (...)",
            )
        if key in SERVER_OPTIONS:
            raise InvalidOption(f'option "{key}" belongs in the foreign server, not in {where}')
        raise InvalidOption(
            f'unknown option "{key}" for {where}',
            hint="valid options: " + ", ".join(sorted(allowed)) if allowed else None,
        )


def _server_part(options: Mapping[str, str]) -> dict[str, Any]:
    _reject_unknown(options, SERVER_OPTIONS, "a pgnats_fdw server")
    part: dict[str, Any] = {}
    has_url = "nats_url" in options
    if has_url and ("host" in options or "port" in options):
        raise InvalidOption(
            'options "nats_url" and "host"/"port" cannot be combined',
            hint="use nats_url alone (it may list several servers), or host and port",
        )
    if has_url:
        urls = options["nats_url"].split(",")
        if any(not u.strip() for u in urls):
            raise InvalidOptionValue('invalid value for option "nats_url": empty URL in the list')
        part["endpoints"] = tuple(_parse_url("nats_url", u) for u in urls)
    elif "host" in options or "port" in options:
        host = _parse_host("host", options["host"]) if "host" in options else DEFAULT_HOST
        port = _parse_port("port", options["port"]) if "port" in options else DEFAULT_PORT
        part["endpoints"] = (Endpoint(host, port, False),)
    for key in ("tls_ca_path", "tls_cert_path", "tls_key_path"):
        if key in options:
            part[key] = _parse_path(key, options[key])
    if ("tls_cert_path" in part) != ("tls_key_path" in part):
        raise InvalidOption('options "tls_cert_path" and "tls_key_path" must be given together')
    if "capacity" in options:
        part["capacity"] = _positive_int("capacity", options["capacity"])
    if "notify_subject" in options:
        try:
            part["notify_subject"] = validate_publish_subject(options["notify_subject"])
        except Exception as exc:
            raise InvalidOptionValue(f'invalid value for option "notify_subject": {exc}') from None
    if "connect_timeout" in options:
        part["connect_timeout_ms"] = _positive_int("connect_timeout", options["connect_timeout"])
    if "request_timeout" in options:
        part["request_timeout_ms"] = _positive_int("request_timeout", options["request_timeout"])
    return part


def _user_mapping_part(options: Mapping[str, str]) -> dict[str, Any]:
    _reject_unknown(options, USER_MAPPING_OPTIONS, "a user mapping of a pgnats_fdw server")
    if "password" in options and "user" not in options:
        raise InvalidOption('option "password" needs option "user"')
    if "user" in options and "password" not in options:
        raise InvalidOption('option "user" needs option "password"')
    methods = [
        name
        for name, present in (
            ("user/password", "user" in options),
            ("token", "token" in options),
            ("creds_path", "creds_path" in options),
            ("nkey_seed_path", "nkey_seed_path" in options),
        )
        if present
    ]
    if len(methods) > 1:
        raise InvalidOption(
            "only one way of authenticating may be given, found: " + ", ".join(methods)
        )
    part: dict[str, Any] = {}
    for key in ("user", "password", "token"):
        if key in options:
            if options[key] == "":
                raise InvalidOptionValue(f'invalid value for option "{key}": it is empty')
            part[key] = options[key]
    for key in ("creds_path", "nkey_seed_path"):
        if key in options:
            part[key] = _parse_path(key, options[key])
    return part


def validate_options(kind: OptionKind, options: Mapping[str, str]) -> None:
    """Raise :class:`InvalidOption` when ``options`` are not valid for ``kind``."""
    if kind == "server":
        _server_part(options)
    elif kind == "user_mapping":
        _user_mapping_part(options)
    elif kind == "wrapper":
        _reject_unknown(options, frozenset(), "the pgnats_fdw wrapper")
    else:
        _reject_unknown(options, frozenset(), "this object")


def settings_from_options(
    server_options: Mapping[str, str] | None,
    user_mapping_options: Mapping[str, str] | None = None,
) -> ConnectSettings:
    """Build validated settings; ``None`` server options mean the default server."""
    fields: dict[str, Any] = {}
    if server_options is not None:
        fields.update(_server_part(server_options))
    if user_mapping_options is not None:
        fields.update(_user_mapping_part(user_mapping_options))
    return ConnectSettings(**fields)
