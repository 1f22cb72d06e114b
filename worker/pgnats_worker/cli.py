"""The ``pgnats-worker`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from pgnats_worker.logs import setup_logging
from pgnats_worker.options import WorkerOptions
from pgnats_worker.supervisor import Supervisor

DEFAULTS = WorkerOptions()


def parse_args(argv: list[str] | None = None) -> tuple[WorkerOptions, str]:
    parser = argparse.ArgumentParser(
        prog="pgnats-worker",
        description="Hands NATS messages to the SQL functions subscribed with nats_subscribe(), "
        "in every database of a PostgreSQL cluster that has the pgnats extension.",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("PGNATS_WORKER_DSN", ""),
        help="libpq connection string or URL of any database of the cluster, as a superuser "
        "(default: $PGNATS_WORKER_DSN, else libpq's PG* environment variables)",
    )
    parser.add_argument(
        "--rescan-interval",
        type=float,
        default=DEFAULTS.rescan_interval,
        help="seconds between looks for new databases with the extension (default %(default)s)",
    )
    parser.add_argument(
        "--reconcile-interval",
        type=float,
        default=DEFAULTS.reconcile_interval,
        help="seconds between re-reads of pgnats.subscriptions, besides LISTEN/NOTIFY "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=DEFAULTS.heartbeat_interval,
        help="seconds between updates of pgnats.worker_status (default %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS.batch_size,
        help="most messages handled in one transaction (default %(default)s)",
    )
    parser.add_argument(
        "--queue-limit",
        type=int,
        default=DEFAULTS.queue_limit,
        help="most received messages waiting per database (while PostgreSQL is slow or "
        "down); beyond it new messages are dropped, counted and logged (default %(default)s)",
    )
    parser.add_argument(
        "--queue-bytes",
        type=int,
        default=DEFAULTS.queue_bytes,
        help="most payload bytes waiting per database; beyond it, the same (default "
        "%(default)s, 256 MiB)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULTS.shutdown_timeout,
        help="seconds to finish the received messages on SIGTERM before cancelling "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--nats-reconnect-wait",
        type=float,
        default=DEFAULTS.nats_reconnect_wait,
        help="seconds between attempts to reach NATS, at most (default %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    for name in (
        "rescan_interval",
        "reconcile_interval",
        "heartbeat_interval",
        "shutdown_timeout",
        "nats_reconnect_wait",
    ):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("batch_size", "queue_limit", "queue_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    options = WorkerOptions(
        dsn=args.dsn,
        rescan_interval=args.rescan_interval,
        reconcile_interval=args.reconcile_interval,
        heartbeat_interval=args.heartbeat_interval,
        batch_size=args.batch_size,
        queue_limit=args.queue_limit,
        queue_bytes=args.queue_bytes,
        shutdown_timeout=args.shutdown_timeout,
        nats_reconnect_wait=args.nats_reconnect_wait,
    )
    return options, args.log_level


# NATS messages are parsed in a thread of their own (see nats_link.py); hand the GIL over
# often, so that the event loop answering PostgreSQL never waits long for it.
SWITCH_INTERVAL = 0.0005


def main(argv: list[str] | None = None) -> None:
    options, log_level = parse_args(argv)
    setup_logging(log_level)
    sys.setswitchinterval(SWITCH_INTERVAL)
    raise SystemExit(asyncio.run(Supervisor(options).run()))


if __name__ == "__main__":
    main()
