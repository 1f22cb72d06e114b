"""Benchmark of the subscription worker, with its baselines measured in the same run.

    .venv/bin/python bench/worker.py [--messages 50000] [--rate 500] [--seconds 5]

N messages of 51 bytes are published as fast as nats-py can to a subject whose callback
(plpgsql) inserts one row. The script starts its own PostgreSQL (default settings:
fsync and synchronous_commit on, plus track_commit_timestamp) and NATS, and measures:

  (a) pgnats-worker: from the first publish to the last row committed (the worker log has
      each batch's size and time);
  (b) a naive sidecar written here: nats-py subscribe, psycopg autocommit, one
      ``SELECT cb(%s)`` per message;
  (c) the bulk bound: ``SELECT cb(x) FROM unnest(%s::bytea[])``, all N in one statement.

Then end-to-end latency through the worker at about ``--rate`` messages per second: from
the publish (time in the payload) to the commit of the row (pg_xact_commit_timestamp).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import nats
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgnats_worker.payloads import PayloadArray, register_payload_arrays

from devstack.stack import Stack, temporary_stack
from devstack.worker import WorkerProcess

PAYLOAD_SIZE = 51

SETUP = """
CREATE TABLE bench_log (id bigserial PRIMARY KEY, message text NOT NULL,
                        received_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION bench_cb(payload bytea) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_log (message) VALUES (convert_from(payload, 'UTF8'));
END
$$;
CREATE TABLE latency_log (sent_at double precision NOT NULL);
CREATE FUNCTION latency_cb(payload bytea) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO latency_log (sent_at) VALUES (convert_from(payload, 'UTF8')::double precision);
END
$$;
"""

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def payloads(count: int) -> list[bytes]:
    return [f"message {number:08d} ".ljust(PAYLOAD_SIZE, "x").encode() for number in range(count)]


async def count_rows(conn: Conn, table: str = "bench_log") -> int:
    cursor = await conn.execute(f"SELECT count(*) FROM {table}")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def processed(conn: Conn, subject: str) -> int:
    cursor = await conn.execute(
        "SELECT coalesce(sum(processed), 0) FROM pgnats.subscription_stats WHERE subject = %s",
        (subject,),
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def wait_processed(conn: Conn, subject: str, expected: int, timeout: float = 600.0) -> float:
    """Poll until the worker has committed ``expected`` calls; the time it had. (Its counter
    is committed with the rows, and reading it costs next to nothing, unlike count(*).)"""
    deadline = time.monotonic() + timeout
    while True:
        if await processed(conn, subject) >= expected:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{await processed(conn, subject)} of {expected} after {timeout}s")
        await asyncio.sleep(0.005)


async def publish_all(url: str, subject: str, data: list[bytes]) -> float:
    """Publish everything as fast as possible; the time of the first publish."""
    client = await nats.connect(url, pending_size=64 * 1024 * 1024)
    started = time.perf_counter()
    for payload in data:
        await client.publish(subject, payload)
    await client.flush(timeout=60)
    await client.close()
    return started


async def bulk_bound(dsn: str, data: list[bytes]) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        # The worker's own fast bytea[] adapter: the bound is PostgreSQL's time, not psycopg's.
        register_payload_arrays(conn.adapters)
        await conn.execute("TRUNCATE bench_log")
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute(
                "SELECT bench_cb(x) FROM unnest(%s::bytea[]) AS x", (PayloadArray(data),)
            )
        elapsed = time.perf_counter() - started
        assert await count_rows(conn) == len(data)
        await conn.execute("TRUNCATE bench_log")
    return len(data) / elapsed


async def naive_sidecar(dsn: str, url: str, data: list[bytes]) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(msg: Any) -> None:
            queue.put_nowait(msg.data)

        client = await nats.connect(url)
        await client.subscribe("bench.naive", cb=on_message, pending_msgs_limit=10_000_000)
        await client.flush()

        async def consume() -> float:
            for _ in range(len(data)):
                payload = await queue.get()
                await conn.execute("SELECT bench_cb(%s)", (payload,))
            return time.perf_counter()

        consumer = asyncio.create_task(consume())
        started = await publish_all(url, "bench.naive", data)
        finished = await consumer
        await client.close()
        assert await count_rows(conn) == len(data)
        await conn.execute("TRUNCATE bench_log")
    return len(data) / (finished - started)


async def wait_subscribed(conn: Conn, subject: str) -> None:
    for _ in range(400):
        cursor = await conn.execute(
            "SELECT bool_and(subscribed) FROM pgnats.subscription_status WHERE subject = %s",
            (subject,),
        )
        row = await cursor.fetchone()
        if row is not None and row[0]:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the worker did not subscribe to {subject}")


async def through_worker(dsn: str, url: str, data: list[bytes]) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT nats_subscribe('bench.worker', 'bench_cb'::regproc)")
        await wait_subscribed(conn, "bench.worker")
        started = await publish_all(url, "bench.worker", data)
        finished = await wait_processed(conn, "bench.worker", len(data))
        assert await count_rows(conn) == len(data)
        await conn.execute("SELECT nats_unsubscribe('bench.worker', 'bench_cb'::regproc)")
        await conn.execute("TRUNCATE bench_log")
    return len(data) / (finished - started)


async def latency(dsn: str, url: str, rate: float, seconds: float) -> list[float]:
    """Milliseconds from publish to commit, for messages sent at ``rate`` per second."""
    count = int(rate * seconds)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT nats_subscribe('bench.latency', 'latency_cb'::regproc)")
        await wait_subscribed(conn, "bench.latency")
        client = await nats.connect(url)
        started = time.perf_counter()
        for number in range(count):
            await client.publish("bench.latency", repr(time.time()).encode())
            await client.flush()
            pause = started + (number + 1) / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
        await client.close()
        for _ in range(1000):
            if await count_rows(conn, "latency_log") >= count:
                break
            await asyncio.sleep(0.01)
        cursor = await conn.execute(
            "SELECT (extract(epoch FROM pg_xact_commit_timestamp(xmin)) - sent_at) * 1000 "
            "FROM latency_log"
        )
        return [float(row[0]) for row in await cursor.fetchall()]


async def commit_latency(dsn: str, rate: float, seconds: float) -> list[float]:
    """The floor: milliseconds for a client's own one-row INSERT to commit, at ``rate``."""
    count = int(rate * seconds)
    delays: list[float] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        for number in range(count):
            sent = time.perf_counter()
            await conn.execute("INSERT INTO latency_log (sent_at) VALUES (0)")
            delays.append((time.perf_counter() - sent) * 1000)
            pause = started + (number + 1) / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
        await conn.execute("TRUNCATE latency_log")
    return delays


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def settle(dsn: str) -> None:
    """Start a latency run from the same state: no checkpoint or vacuum debt from before."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE bench_log")
        await conn.execute("VACUUM ANALYZE latency_log")
        await conn.execute("CHECKPOINT")
    await asyncio.sleep(0.5)


async def run(args: argparse.Namespace, stack: Stack) -> None:
    dsn = stack.postgres.dsn("bench")
    url = stack.nats.url
    data = payloads(args.messages)
    naive = await naive_sidecar(dsn, url, data[: args.naive_messages])
    (stack.checkout / ".stack" / "bench-worker.log").unlink(missing_ok=True)
    worker = WorkerProcess(
        dsn=stack.postgres.url(),
        log_path=stack.checkout / ".stack" / "bench-worker.log",
        args=["--rescan-interval", "0.5", "--log-level", "DEBUG"],
    )
    worker.start()
    bounds: list[float] = []
    throughs: list[float] = []
    try:
        worker.wait_for_log("database=bench: serving this database")
        # The machine is shared: the bound and the worker take turns, --repeat times, and
        # the medians are compared.
        for _ in range(args.repeat):
            bounds.append(await bulk_bound(dsn, data))
            throughs.append(await through_worker(dsn, url, data))
        await settle(dsn)
        floor = await commit_latency(dsn, args.rate, args.seconds)
        await settle(dsn)
        delays = await latency(dsn, url, args.rate, args.seconds)
    finally:
        worker.stop()
    bound = statistics.median(bounds)
    through = statistics.median(throughs)

    print(
        f"pgnats worker benchmark: {args.messages} messages of {PAYLOAD_SIZE} bytes "
        f"(naive sidecar: {args.naive_messages}), callback plpgsql inserting one row; "
        f"(a) and (c) alternate, median of {args.repeat}"
    )
    runs = ", ".join(f"{rate:.0f}" for rate in throughs)
    print(f"  (a) pgnats-worker                 {through:10.0f} msgs/s   (runs: {runs})")
    print(f"  (b) naive sidecar                 {naive:10.0f} msgs/s")
    runs = ", ".join(f"{rate:.0f}" for rate in bounds)
    print(f"  (c) bulk bound (one statement)    {bound:10.0f} msgs/s   (runs: {runs})")
    print(f"  worker / naive  = {through / naive:6.1f}x   (goal >= 10x)")
    print(f"  worker / bound  = {100 * through / bound:6.1f} %   (goal >= 50 %)")
    print(
        f"latency publish -> committed row at {args.rate:.0f} msgs/s, {len(delays)} messages: "
        f"p50 {percentile(delays, 0.5):.2f} ms, p99 {percentile(delays, 0.99):.2f} ms, "
        f"max {max(delays):.2f} ms, mean {statistics.fmean(delays):.2f} ms   (goal p99 < 5 ms)"
    )
    print(
        f"  floor: a client's own INSERT + COMMIT at the same rate: "
        f"p50 {percentile(floor, 0.5):.2f} ms, p99 {percentile(floor, 0.99):.2f} ms, "
        f"max {max(floor):.2f} ms"
    )
    print(f"  (worker log, with each batch's size and time: {worker.log_path})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument(
        "--naive-messages", type=int, default=10_000, help="fewer: it is slow (default 10000)"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="latency run: messages/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency run: duration")
    parser.add_argument("--repeat", type=int, default=3, help="runs of (a) and (c); medians")
    args = parser.parse_args()
    with temporary_stack("bench", {"track_commit_timestamp": "on"}) as stack:
        stack.create_database("bench")
        with psycopg.connect(stack.postgres.dsn("bench"), autocommit=True) as conn:
            conn.execute(SETUP)
        asyncio.run(run(args, stack))


if __name__ == "__main__":
    main()
