"""The whole local stack: the private PostgreSQL install, a cluster, and a NATS server.

State lives in ``<checkout>/.stack/<name>/`` (git ignores ``.stack``): ports in
``state.json``, and ``env``, a shell file to source (PGHOST, PGPORT, PGUSER, PGDATABASE,
NATS_URL). When the ``postgres`` OS user cannot enter the checkout (a 0700 temporary
clone, say), the cluster's files go to a folder under /tmp instead and ``state.json``
says where.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from devstack.nats import NatsServer
from devstack.osuser import service_user_can_reach
from devstack.ports import free_port, port_is_free
from devstack.postgres import PgInstall, PostgresCluster
from devstack.worker import WorkerProcess

CHECKOUT = Path(__file__).resolve().parents[1]


def _pick_port(preferred: int | None) -> int:
    if preferred is not None and port_is_free(preferred):
        return preferred
    return free_port()


@dataclass
class Stack:
    name: str = "dev"
    checkout: Path = CHECKOUT
    pg_settings: dict[str, str] = field(default_factory=dict)
    prefer_default_ports: bool = False

    def __post_init__(self) -> None:
        self.state_dir = self.checkout / ".stack" / self.name
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = self._read_state()
        runtime = state.get("runtime_dir")
        self.runtime_dir = Path(runtime) if runtime else self._choose_runtime_dir()
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runtime_dir, 0o755)
        pg_port = state.get("pg_port") or _pick_port(5432 if self.prefer_default_ports else None)
        nats_port = state.get("nats_port") or _pick_port(
            4222 if self.prefer_default_ports else None
        )
        self.install = PgInstall(self.runtime_dir / "root")
        self.postgres = PostgresCluster(
            install=self.install,
            datadir=self.runtime_dir / "pgdata",
            port=int(pg_port),
            socket_dir=self.runtime_dir / "sock",
            log_path=self.runtime_dir / "postgres.log",
            settings=self.pg_settings,
        )
        self.nats = NatsServer(port=int(nats_port), workdir=self.runtime_dir / "nats")
        self.worker = WorkerProcess(
            dsn=self.postgres.url(),
            log_path=self.state_dir / "worker.log",
            pid_path=self.state_dir / "worker.pid",
            # Notice a database created for the demo (or by hand) within two seconds.
            args=["--rescan-interval", "2"],
        )
        self._write_state()

    # -- state -------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def env_path(self) -> Path:
        return self.state_dir / "env"

    def _read_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        state = {
            "runtime_dir": str(self.runtime_dir),
            "pg_port": self.postgres.port,
            "nats_port": self.nats.port,
        }
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")

    def _choose_runtime_dir(self) -> Path:
        if service_user_can_reach(self.state_dir):
            return self.state_dir
        digest = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pgnats-stack-{digest}"

    # -- lifecycle ---------------------------------------------------------------------
    def install_extension(self) -> None:
        """Rebuild the private install tree and ``make install`` the checkout into it."""
        self.install.build()
        self.install.make("install", self.checkout, sys.executable)

    def up(self) -> None:
        if not self.postgres.is_running():
            self.install_extension()
            if not (self.postgres.datadir / "PG_VERSION").exists():
                self.postgres.initdb()
            self.postgres.start()
        if self.nats._pid() is None:
            self.nats.start()
        self.write_env()

    def start_worker(self) -> None:
        """pgnats-worker in the background, serving every database of the cluster."""
        if not self.worker.is_running():
            self.worker.start()

    def down(self) -> None:
        self.worker.stop()
        self.nats.stop()
        self.postgres.stop()

    def destroy(self) -> None:
        self.down()
        for path in {self.runtime_dir, self.state_dir}:
            shutil.rmtree(path, ignore_errors=True)

    def create_database(self, name: str, **server_options: str) -> None:
        """A database with pgnats and a pgnats_fdw server pointing at this stack's NATS
        (``server_options`` are added to its options)."""
        with psycopg.connect(self.postgres.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        options = {"nats_url": self.nats.url, **server_options}
        with psycopg.connect(self.postgres.dsn(name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgnats CASCADE")
            conn.execute(
                sql.SQL(
                    "CREATE SERVER nats_server FOREIGN DATA WRAPPER pgnats_fdw OPTIONS ({})"
                ).format(
                    sql.SQL(", ").join(
                        sql.SQL("{} {}").format(sql.Identifier(key), sql.Literal(value))
                        for key, value in options.items()
                    )
                )
            )

    def env(self) -> dict[str, str]:
        return {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.postgres.port),
            "PGUSER": "postgres",
            "PGDATABASE": "postgres",
            "NATS_URL": self.nats.url,
        }

    def write_env(self) -> None:
        lines = [f"export {key}={value}" for key, value in self.env().items()]
        self.env_path.write_text("\n".join(lines) + "\n")


@contextmanager
def temporary_stack(prefix: str, pg_settings: dict[str, str] | None = None) -> Iterator[Stack]:
    """A stack of its own for a script (benchmarks): up on entry, removed on exit."""
    stack = Stack(name=f"{prefix}-{os.getpid()}", pg_settings=pg_settings or {})
    try:
        stack.up()
        yield stack
    finally:
        stack.destroy()
