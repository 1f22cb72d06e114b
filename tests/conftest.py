"""Fixtures: one PostgreSQL cluster (with pgnats installed) and one NATS server per test
session, started by devstack on free ports; a fresh database per test."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from devstack.nats import NatsServer
from devstack.ports import free_port
from devstack.stack import Stack
from tests.nats_helpers import NatsSide

_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    test_stack = Stack(
        name=f"test-{os.getpid()}",
        pg_settings={"fsync": "off", "max_connections": "200"},
    )
    try:
        test_stack.up()
        yield test_stack
    finally:
        test_stack.destroy()


@pytest.fixture(scope="session")
def nats_url(stack: Stack) -> str:
    return stack.nats.url


def admin_connect(stack: Stack, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(stack.postgres.dsn(dbname), autocommit=True)


MakeDatabase = Callable[..., str]


@pytest.fixture
def make_database(stack: Stack) -> Iterator[MakeDatabase]:
    """Creates databases with pgnats (and, unless told otherwise, a foreign server pointing
    at ``nats_url``, default: the session's NATS); drops them after the test."""
    created: list[str] = []

    def make(*, extension: bool = True, nats_url: str | None = None, server: bool = True) -> str:
        name = f"pgnats_test_{os.getpid()}_{next(_database_numbers)}"
        with admin_connect(stack) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        if extension:
            with admin_connect(stack, name) as conn:
                conn.execute("CREATE EXTENSION pgnats CASCADE")
                if server:
                    url = nats_url or stack.nats.url
                    conn.execute(
                        "CREATE SERVER nats_server FOREIGN DATA WRAPPER pgnats_fdw "
                        f"OPTIONS (nats_url '{url}')"
                    )
        return name

    yield make
    with admin_connect(stack) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(make_database: MakeDatabase) -> str:
    """A fresh database with pgnats and a server pointing at the session's NATS."""
    return make_database()


@pytest.fixture
def conn(stack: Stack, db: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection (superuser) to ``db``."""
    with admin_connect(stack, db) as connection:
        yield connection


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A NATS server of this test's own, which the test may stop, kill and restart."""
    server = NatsServer(port=free_port(), workdir=tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def nats_side() -> Iterator[NatsSide]:
    """nats-py subscribers and responders on the test's side, driven synchronously."""
    side = NatsSide()
    try:
        yield side
    finally:
        side.close()
