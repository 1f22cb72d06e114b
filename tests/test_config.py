"""Option parsing and validation (plain Python; the SQL side is in test_fdw.py)."""

from __future__ import annotations

import ssl

import pytest
from pgnats.config import (
    DEFAULT_URL,
    Endpoint,
    parse_option_list,
    settings_from_options,
    validate_options,
)
from pgnats.errors import InvalidOption


def test_defaults_without_server() -> None:
    settings = settings_from_options(None)
    assert settings.servers == [DEFAULT_URL]
    assert settings.ssl_context() is None


def test_url_list() -> None:
    settings = settings_from_options({"nats_url": "nats://a:1, tls://b:2,c"})
    assert settings.endpoints == (
        Endpoint("a", 1, False),
        Endpoint("b", 2, True),
        Endpoint("c", 4222, False),
    )
    assert settings.tls_required
    assert isinstance(settings.ssl_context(), ssl.SSLContext)


def test_host_and_port() -> None:
    settings = settings_from_options({"host": "nats.internal", "port": "4333"})
    assert settings.servers == ["nats://nats.internal:4333"]
    assert settings_from_options({"port": "5"}).servers == ["nats://127.0.0.1:5"]


def test_ipv6_host() -> None:
    assert settings_from_options({"nats_url": "nats://[::1]:4222"}).servers == ["nats://[::1]:4222"]


def test_credentials_and_kwargs() -> None:
    settings = settings_from_options({"nats_url": "nats://h:1"}, {"user": "u", "password": "p"})
    kwargs = settings.nats_connect_kwargs()
    assert kwargs["servers"] == ["nats://h:1"]
    assert (kwargs["user"], kwargs["password"]) == ("u", "p")
    assert "u" not in settings.describe() and "p" not in settings.describe()
    token = settings_from_options(None, {"token": "s3cret"}).nats_connect_kwargs()
    assert token["token"] == "s3cret"


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("server", {"bogus": "1"}, 'unknown option "bogus"'),
        ("server", {"port": "abc"}, 'option "port": "abc" is not a positive integer'),
        ("server", {"port": "70000"}, 'option "port": 70000 is out of range'),
        ("server", {"port": "0"}, "out of range"),
        ("server", {"nats_url": "http://x:1"}, 'has scheme "http"'),
        (
            "server",
            {"nats_url": "nats://x:abc"},
            'option "nats_url": "nats://x:abc" is not a valid URL',
        ),
        ("server", {"nats_url": "nats://:4222"}, "has no host"),
        ("server", {"nats_url": "nats://u:p@x:4222"}, "credentials in the URL"),
        ("server", {"nats_url": "nats://x:1/path"}, "scheme://host:port only"),
        ("server", {"nats_url": "nats://a:1,,nats://b:2"}, "empty URL"),
        ("server", {"nats_url": "nats://a:1", "port": "2"}, "cannot be combined"),
        ("server", {"host": "a b"}, 'option "host"'),
        ("server", {"tls_cert_path": "/c"}, "given together"),
        ("server", {"capacity": "-1"}, 'option "capacity"'),
        ("server", {"notify_subject": "a b"}, 'option "notify_subject"'),
        ("server", {"password": "x"}, "belongs in a user mapping"),
        ("user_mapping", {"nats_url": "nats://x"}, "belongs in the foreign server"),
        ("user_mapping", {"password": "x"}, 'needs option "user"'),
        ("user_mapping", {"user": "x"}, 'needs option "password"'),
        ("user_mapping", {"token": "t", "creds_path": "/c"}, "only one way"),
        ("user_mapping", {"token": ""}, "empty"),
        ("user_mapping", {"bogus": "1"}, 'unknown option "bogus"'),
        ("wrapper", {"x": "1"}, 'unknown option "x"'),
    ],
)
def test_invalid_options(kind: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidOption, match=message):
        validate_options(kind, options)  # type: ignore[arg-type]


def test_parse_option_list() -> None:
    assert parse_option_list(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    assert parse_option_list(None) == {}
    with pytest.raises(InvalidOption, match="malformed"):
        parse_option_list(["novalue"])
