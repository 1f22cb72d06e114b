"""Benchmark of reloads under load: what pgnats_reload_conf_force() costs the messages
flowing through the worker, against the same flow without reloads in the same run.

    .venv/bin/python bench/reload.py [--rate 1000] [--seconds 6] [--reload-every 0.5]

The script starts its own PostgreSQL (track_commit_timestamp on) and NATS and a worker.
A numbered stream of messages is published at ``--rate`` per second for ``--seconds`` to a
subject whose callback (plpgsql) inserts one row, twice: (a) undisturbed, the baseline;
(b) with ``pgnats_reload_conf_force()`` called every ``--reload-every`` seconds, each one a
new NATS connection taking over from the old (make-before-break), and new PostgreSQL
connections for the dispatchers; (c) the same with ``ALTER SERVER`` (connect_timeout)
plus ``pgnats_reload_conf()`` instead: a new NATS connection only. For each run it prints
the messages sent, committed, lost and committed twice, and the latency from publish to
committed row (p50, p99, max); then the ratios (b)/(a), and how long a handover took
(from the reload's commit to the worker's "now receiving through the new NATS
connection" log line).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.stack import Stack, temporary_stack
from devstack.worker import WorkerProcess

SETUP = """
CREATE TABLE stream_log (number integer NOT NULL, sent_at double precision NOT NULL);
CREATE FUNCTION stream_cb(payload bytea) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stream_log
    SELECT split_part(m, ' ', 1)::integer, split_part(m, ' ', 2)::double precision
      FROM convert_from(payload, 'UTF8') AS m;
END
$$;
SELECT nats_subscribe('bench.stream', 'stream_cb'::regproc);
"""

HANDED_OVER = "now receiving through the new NATS connection"

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


@dataclass
class Outcome:
    sent: int
    committed: int
    lost: int
    twice: int
    delays: list[float]  # ms, publish to commit
    handovers: list[float]  # s, reload committed to the new connection receiving


async def publish_stream(url: str, rate: float, seconds: float) -> int:
    """``number sent_at`` at ``rate`` messages per second; the number sent."""
    count = int(rate * seconds)
    client = await nats.connect(url)
    started = time.perf_counter()
    for number in range(1, count + 1):
        await client.publish("bench.stream", f"{number} {time.time()!r}".encode())
        if number % 10 == 0:
            await client.flush()
            pause = started + number / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
    await client.flush()
    await client.close()
    return count


async def reload_repeatedly(
    conn: Conn, worker: WorkerProcess, how: str, every: float, stop: asyncio.Event
) -> list[float]:
    """A reload (``how``: force or settings) every ``every`` seconds, each after the last
    one's handover; how long each handover took."""
    durations: list[float] = []
    while not stop.is_set():
        await asyncio.sleep(every)
        before = worker.log_text().count(HANDED_OVER)
        started = time.perf_counter()
        if how == "force":
            await conn.execute("SELECT pgnats_reload_conf_force()")
        else:
            timeout = 2001 - len(durations) % 2  # differs from the one before
            async with conn.transaction():
                await conn.execute(
                    f"ALTER SERVER nats_server OPTIONS (SET connect_timeout '{timeout}')"
                )
                await conn.execute("SELECT pgnats_reload_conf()")
        while worker.log_text().count(HANDED_OVER) <= before:
            if time.perf_counter() - started > 30:
                raise TimeoutError("no handover within 30 s")
            await asyncio.sleep(0.002)
        durations.append(time.perf_counter() - started)
    return durations


async def one_run(
    dsn: str, url: str, worker: WorkerProcess, args: argparse.Namespace, reloads: str | None
) -> Outcome:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("TRUNCATE stream_log")
        stop = asyncio.Event()
        reloader = (
            asyncio.create_task(reload_repeatedly(conn, worker, reloads, args.reload_every, stop))
            if reloads is not None
            else None
        )
        sent = await publish_stream(url, args.rate, args.seconds)
        stop.set()
        handovers = await reloader if reloader is not None else []
        deadline = time.monotonic() + 60
        committed = 0
        while time.monotonic() < deadline:
            cursor = await conn.execute("SELECT count(DISTINCT number) FROM stream_log")
            row = await cursor.fetchone()
            committed = int(row[0]) if row is not None else 0
            if committed >= sent:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # anything committed twice arrives too
        cursor = await conn.execute(
            "SELECT count(DISTINCT number), count(*) - count(DISTINCT number) FROM stream_log"
        )
        row = await cursor.fetchone()
        assert row is not None
        committed, twice = int(row[0]), int(row[1])
        cursor = await conn.execute(
            "SELECT (extract(epoch FROM pg_xact_commit_timestamp(xmin)) - sent_at) * 1000 "
            "FROM stream_log"
        )
        delays = [float(r[0]) for r in await cursor.fetchall()]
    return Outcome(sent, committed, sent - committed, twice, delays, handovers)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe(name: str, outcome: Outcome) -> str:
    delays = outcome.delays
    return (
        f"  {name}:\n      sent {outcome.sent}, committed {outcome.committed}, "
        f"lost {outcome.lost}, committed twice {outcome.twice}; latency "
        f"p50 {percentile(delays, 0.5):.2f} ms, p99 {percentile(delays, 0.99):.2f} ms, "
        f"max {max(delays):.2f} ms"
    )


async def run(args: argparse.Namespace, stack: Stack) -> None:
    dsn = stack.postgres.dsn("bench")
    log_path = stack.checkout / ".stack" / "bench-reload-worker.log"
    log_path.unlink(missing_ok=True)
    worker = WorkerProcess(dsn=stack.postgres.url(), log_path=log_path)
    worker.start()
    try:
        worker.wait_for_log("database=bench: serving this database")
        baseline = await one_run(dsn, stack.nats.url, worker, args, reloads=None)
        forced = await one_run(dsn, stack.nats.url, worker, args, reloads="force")
        changed = await one_run(dsn, stack.nats.url, worker, args, reloads="settings")
    finally:
        worker.stop()
    print(
        f"pgnats reload benchmark: {args.rate:.0f} msgs/s for {args.seconds:.0f} s, "
        "callback plpgsql inserting one row"
    )
    every = f"every {args.reload_every:.1f} s"
    print(describe("(a) no reloads", baseline))
    print(describe(f"(b) pgnats_reload_conf_force() {every}", forced))
    print(describe(f"(c) ALTER SERVER + pgnats_reload_conf() {every}", changed))
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        base = percentile(baseline.delays, fraction)
        print(
            f"  latency {name}: (b)/(a) = {percentile(forced.delays, fraction) / base:.2f}, "
            f"(c)/(a) = {percentile(changed.delays, fraction) / base:.2f}"
        )
    for name, outcome in (("(b)", forced), ("(c)", changed)):
        handovers = outcome.handovers
        print(
            f"  {name} {len(handovers)} handovers (reload committed -> new connection "
            f"receiving): median {1000 * statistics.median(handovers):.0f} ms, "
            f"max {1000 * max(handovers):.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each run")
    parser.add_argument("--reload-every", type=float, default=0.5, help="seconds")
    args = parser.parse_args()
    with temporary_stack("bench", {"track_commit_timestamp": "on"}) as stack:
        stack.create_database("bench", connect_timeout="2000")
        with psycopg.connect(stack.postgres.dsn("bench"), autocommit=True) as conn:
            conn.execute(SETUP)
        asyncio.run(run(args, stack))


if __name__ == "__main__":
    main()
