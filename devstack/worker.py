"""A pgnats-worker process, run from this checkout with the current Python (the venv)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.processes import pid_alive


@dataclass
class WorkerProcess:
    """``python -m pgnats_worker --dsn DSN ARGS...``, logging to ``log_path``.

    With a ``pid_path`` the process outlives this object (``python -m devstack up``) and
    :meth:`stop` finds it again through the file.
    """

    dsn: str
    log_path: Path
    args: list[str] = field(default_factory=list)
    pid_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pgnats_worker", "--dsn", self.dsn, *self.args]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if self.pid_path is not None:
            self.pid_path.write_text(f"{self.process.pid}\n")

    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid if self.process.poll() is None else None
        if self.pid_path is None:
            return None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        """Wait until ``text`` appears in the log; fail if the worker exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"pgnats-worker exited ({self.process.returncode}):\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{text!r} not in the worker log after {timeout}s:\n{self.log_text()}"
                )
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, sig)

    def wait(self, timeout: float) -> int | None:
        """The exit status, once the process has ended within ``timeout`` (else None)."""
        if self.process is not None:
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        deadline = time.monotonic() + timeout
        while self.is_running():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return 0

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; the exit status."""
        if not self.is_running():
            return self.process.returncode if self.process is not None else None
        self.signal(signal.SIGTERM)
        status = self.wait(timeout)
        if status is None:
            self.signal(signal.SIGKILL)
            status = self.wait(5.0)
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)
        return status
