"""Installing the extension: PGXS install into the cluster, CREATE EXTENSION, uninstall."""

from __future__ import annotations

import sys

import psycopg
import pytest

from devstack.stack import Stack
from tests.conftest import MakeDatabase, admin_connect


def test_create_extension_in_two_databases(stack: Stack, make_database: MakeDatabase) -> None:
    first = make_database(server=False)
    second = make_database(server=False)
    for name in (first, second):
        with admin_connect(stack, name) as conn:
            row = conn.execute("SELECT (pgnats_version()).version").fetchone()
            assert row == ("1.0.0",)
            installed = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'pgnats'"
            ).fetchone()
            assert installed == ("1.0",)


def test_python_package_is_outside_system_site_packages(stack: Stack, db: str) -> None:
    with admin_connect(stack, db) as conn:
        conn.execute(
            "CREATE FUNCTION pg_temp.where_is_nats() RETURNS text LANGUAGE plpython3u AS "
            "$$ plpy.execute('SELECT pgnats._load_python()'); import nats; return nats.__file__ $$"
        )
        path = conn.execute("SELECT pg_temp.where_is_nats()").fetchone()
    assert path is not None
    assert str(path[0]).startswith(str(stack.install.private_sharedir / "pgnats" / "python"))


def test_version_columns(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    row = conn.execute("SELECT * FROM pgnats_version()").fetchone()
    assert row is not None
    version, python_version, nats_py_version = row
    assert version == "1.0.0"
    assert str(python_version).startswith("3.")
    assert nats_py_version == "2.16.0"


def test_uninstall_then_install_again(stack: Stack, make_database: MakeDatabase) -> None:
    stack.install.make("uninstall", stack.checkout, sys.executable)
    try:
        assert not (stack.install.private_sharedir / "pgnats").exists()
        assert not (stack.install.private_sharedir / "extension" / "pgnats.control").exists()
        name = make_database(extension=False)
        with (
            admin_connect(stack, name) as conn,
            pytest.raises(psycopg.errors.FeatureNotSupported, match="pgnats"),
        ):
            conn.execute("CREATE EXTENSION pgnats CASCADE")
    finally:
        stack.install.make("install", stack.checkout, sys.executable)
    name = make_database(server=False)
    with admin_connect(stack, name) as conn:
        assert conn.execute("SELECT (pgnats_version()).version").fetchone() == ("1.0.0",)
