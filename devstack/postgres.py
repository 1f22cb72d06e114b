"""A PostgreSQL cluster of our own, running a private copy of the server's install layout.

PostgreSQL finds its share and lib folders relative to its own binary. A copy of the
``postgres`` binary under ``<root>/<bindir>`` therefore uses ``<root>/<sharedir>``, which
holds symlinks to the system's files plus what ``make install DESTDIR=<root>`` put there.
So tests and the local stack install pgnats without touching the system's PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from devstack.osuser import as_service_user, give_to_service_user


def pg_config_value(pg_config: str, flag: str) -> Path:
    out = subprocess.run([pg_config, flag], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@dataclass
class PgInstall:
    """The private install tree at ``root`` mirroring the system layout of ``pg_config``."""

    root: Path
    pg_config: str = "pg_config"
    bindir: Path = field(init=False)
    sharedir: Path = field(init=False)
    pkglibdir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bindir = pg_config_value(self.pg_config, "--bindir")
        self.sharedir = pg_config_value(self.pg_config, "--sharedir")
        self.pkglibdir = pg_config_value(self.pg_config, "--pkglibdir")

    def _under_root(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    @property
    def postgres_bin(self) -> Path:
        return self._under_root(self.bindir) / "postgres"

    @property
    def private_sharedir(self) -> Path:
        return self._under_root(self.sharedir)

    def system_bin(self, name: str) -> Path:
        return self.bindir / name

    def build(self) -> None:
        """(Re)create the tree: a copied postgres binary, symlinks to everything else."""
        if self.root.exists():
            shutil.rmtree(self.root)
        bindir = self._under_root(self.bindir)
        bindir.mkdir(parents=True)
        shutil.copy2(self.bindir / "postgres", bindir / "postgres")
        _link_entries(self.pkglibdir, self._under_root(self.pkglibdir))
        _link_entries(self.sharedir, self.private_sharedir, except_names={"extension"})
        _link_entries(self.sharedir / "extension", self.private_sharedir / "extension")
        _make_readable(self.root)

    def make(self, target: str, checkout: Path, python: str) -> None:
        """``make install`` (or ``uninstall``) of the checkout into this tree."""
        result = subprocess.run(
            [
                "make",
                "-s",
                "-C",
                str(checkout),
                target,
                f"DESTDIR={self.root}",
                f"PG_CONFIG={self.pg_config}",
                f"PYTHON={python}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"make {target} failed:\n{result.stdout}{result.stderr}")
        if target == "install":
            _make_readable(self.root)


def _link_entries(
    source: Path, target: Path, except_names: frozenset[str] | set[str] = frozenset()
) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name not in except_names:
            (target / entry.name).symlink_to(entry)


def _make_readable(root: Path) -> None:
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)


@dataclass
class PostgresCluster:
    """One cluster: ``initdb`` once, then start, stop and restart on a fixed port."""

    install: PgInstall
    datadir: Path
    port: int
    socket_dir: Path
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)

    def initdb(self) -> None:
        for path in (self.datadir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            give_to_service_user(path)
        os.chmod(self.datadir, 0o700)
        self.log_path.touch()
        give_to_service_user(self.log_path)
        subprocess.run(
            as_service_user(
                [
                    str(self.install.system_bin("initdb")),
                    "-D",
                    str(self.datadir),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            cwd="/",  # the postgres OS user may not be allowed into ours
        )
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            **self.settings,
        }
        with open(self.datadir / "postgresql.conf", "a") as handle:
            handle.write("\n# devstack\n")
            for key, value in conf.items():
                handle.write(f"{key} = {value}\n")

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            as_service_user(
                [
                    str(self.install.system_bin("pg_ctl")),
                    "-D",
                    str(self.datadir),
                    "-p",
                    str(self.install.postgres_bin),
                    "-l",
                    str(self.log_path),
                    *args,
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            cwd="/",  # the postgres OS user may not be allowed into ours
        )

    def start(self) -> None:
        self._pg_ctl("-w", "-t", "60", "start")
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._pg_ctl("-w", "-t", "60", "-m", mode, "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
