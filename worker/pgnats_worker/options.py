"""The worker's settings, from the command line (see cli.py for the meaning of each)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerOptions:
    dsn: str = ""
    rescan_interval: float = 10.0
    reconcile_interval: float = 5.0
    heartbeat_interval: float = 5.0
    batch_size: int = 10_000
    queue_limit: int = 100_000
    queue_bytes: int = 256 * 1024 * 1024
    shutdown_timeout: float = 5.0
    nats_reconnect_wait: float = 1.0
    connect_timeout: float = 5.0
