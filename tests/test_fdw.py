"""The pgnats_fdw wrapper: its validator's errors, and one server per database."""

from __future__ import annotations

import psycopg
import pytest


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("bogus '1'", 'unknown option "bogus" for a pgnats_fdw server'),
        ("port 'abc'", 'invalid value for option "port": "abc" is not a positive integer'),
        ("nats_url 'nats://host:notaport'", 'invalid value for option "nats_url"'),
        ("nats_url 'http://localhost:4222'", 'has scheme "http"'),
        ("nats_url 'nats://user:pw@localhost:4222'", "credentials in the URL"),
        ("password 'x'", 'option "password" belongs in a user mapping'),
    ],
)
def test_server_option_errors(
    conn: psycopg.Connection[tuple[object, ...]], options: str, message: str
) -> None:
    conn.execute("DROP SERVER nats_server")
    with pytest.raises(psycopg.Error, match=message) as excinfo:
        conn.execute(f"CREATE SERVER bad FOREIGN DATA WRAPPER pgnats_fdw OPTIONS ({options})")
    assert str(excinfo.value).startswith("pgnats: ")
    assert excinfo.value.sqlstate in ("HV00D", "HV024")


def test_alter_server_is_validated(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with pytest.raises(psycopg.errors.FdwInvalidAttributeValue, match='"port"'):
        conn.execute("ALTER SERVER nats_server OPTIONS (DROP nats_url, ADD port 'x')")
    conn.execute("ALTER SERVER nats_server OPTIONS (SET nats_url 'nats://127.0.0.1:1')")


def test_user_mapping_options(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        "CREATE USER MAPPING FOR CURRENT_USER SERVER nats_server "
        "OPTIONS (user 'app', password 'secret')"
    )
    with pytest.raises(psycopg.errors.FdwInvalidOptionName, match="only one way"):
        conn.execute(
            "CREATE USER MAPPING FOR PUBLIC SERVER nats_server OPTIONS (token 't', user 'u', "
            "password 'p')"
        )
    with pytest.raises(psycopg.errors.FdwInvalidOptionName, match="belongs in the foreign server"):
        conn.execute("CREATE USER MAPPING FOR PUBLIC SERVER nats_server OPTIONS (port '1')")


def test_wrapper_takes_no_options(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with pytest.raises(psycopg.errors.FdwInvalidOptionName, match='unknown option "x"'):
        conn.execute("ALTER FOREIGN DATA WRAPPER pgnats_fdw OPTIONS (x '1')")


def test_second_server_is_refused(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with pytest.raises(psycopg.errors.FdwError, match="only one pgnats_fdw server"):
        conn.execute("CREATE SERVER second FOREIGN DATA WRAPPER pgnats_fdw")
    # Servers of other wrappers are not affected.
    conn.execute("CREATE FOREIGN DATA WRAPPER other_fdw")
    conn.execute("CREATE SERVER other FOREIGN DATA WRAPPER other_fdw")


def test_server_is_optional(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("DROP SERVER nats_server")
    conn.execute("CREATE SERVER nats_server FOREIGN DATA WRAPPER pgnats_fdw")
