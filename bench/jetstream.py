"""Benchmark: JetStream from SQL against nats-py in a plain Python process.

    .venv/bin/python bench/jetstream.py [--messages N] [--rounds R] [--file-mb M]

Starts a stack of its own (PostgreSQL with pgnats installed, and NATS with JetStream) on
free ports, and removes it at the end. For each operation it times

- SQL: ``SELECT count(f(...)) FROM generate_series(1, N)``, one backend, one call per row;
- baseline: the same N operations from this process with nats-py, one at a time, each
  awaited (a stream publish waits for its ack, as the SQL function does).

Both store the same things: every stream-publish run must add exactly N messages to the
stream, and every KV run must leave N keys with the right revisions, or the benchmark fails.
Rounds alternate between SQL and baseline and the best round of each counts, so that both
see the same machine load. The object store rows move one file of --file-mb MB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import psycopg
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.stack import temporary_stack

STREAM = "BENCH"
SUBJECT = "bench.x"
PAYLOAD = "hello"

Conn = psycopg.Connection[tuple[object, ...]]


class Baseline:
    """nats-py in this process, on an event loop of its own."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.nc: NatsClient = self.loop.run_until_complete(nats.connect(url))
        self.js: JetStreamContext = self.nc.jetstream()

    def run(self, coro: Awaitable[object]) -> object:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


def timed(action: Callable[[], object], operations: float) -> float:
    """Operations per second of ``action``."""
    started = time.perf_counter()
    action()
    return operations / (time.perf_counter() - started)


def stream_count(baseline: Baseline) -> int:
    async def count() -> int:
        return int((await baseline.js.stream_info(STREAM)).state.messages)

    return int(str(baseline.run(count())))


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {message}")


def bench_stream_publish(conn: Conn, baseline: Baseline, n: int) -> tuple[float, float]:
    before = stream_count(baseline)
    sql = timed(
        lambda: conn.execute(
            "SELECT count(nats_publish_text_stream(%s, %s)) FROM generate_series(1, %s)",
            (SUBJECT, PAYLOAD, n),
        ),
        n,
    )
    check(stream_count(baseline) == before + n, "SQL stream publish did not store N messages")

    async def publish_all() -> None:
        for _ in range(n):
            await baseline.js.publish(SUBJECT, PAYLOAD.encode())

    python = timed(lambda: baseline.run(publish_all()), n)
    check(stream_count(baseline) == before + 2 * n, "nats-py did not store N messages")
    return sql, python


def bench_kv_put(conn: Conn, baseline: Baseline, n: int, round_no: int) -> tuple[float, float]:
    sql_bucket, py_bucket = f"sql{round_no}", f"py{round_no}"
    sql = timed(
        lambda: conn.execute(
            "SELECT count(nats_put_text(%s, 'k' || i, %s)) FROM generate_series(1, %s) i",
            (sql_bucket, PAYLOAD, n),
        ),
        n,
    )

    async def put_all() -> None:
        kv = await baseline.js.create_key_value(bucket=py_bucket)
        for i in range(1, n + 1):
            await kv.put(f"k{i}", PAYLOAD.encode())

    python = timed(lambda: baseline.run(put_all()), n)

    async def last_revision(bucket: str) -> int:
        kv = await baseline.js.key_value(bucket)
        return int((await kv.get(f"k{n}")).revision or 0)

    for bucket in (sql_bucket, py_bucket):
        check(baseline.run(last_revision(bucket)) == n, f"bucket {bucket} lacks N revisions")
    return sql, python


def bench_kv_get(conn: Conn, baseline: Baseline, n: int, round_no: int) -> tuple[float, float]:
    bucket = f"sql{round_no}"  # filled by bench_kv_put
    values: list[object] = []
    sql = timed(
        lambda: values.extend(
            conn.execute(
                "SELECT count(*) FILTER (WHERE nats_get_text(%s, 'k' || i) = %s) "
                "FROM generate_series(1, %s) i",
                (bucket, PAYLOAD, n),
            ).fetchone()
            or ()
        ),
        n,
    )
    check(values == [n], "SQL get did not read N values")

    async def get_all() -> int:
        kv = await baseline.js.key_value(bucket)
        return sum([(await kv.get(f"k{i}")).value == PAYLOAD.encode() for i in range(1, n + 1)])

    found: list[object] = []
    python = timed(lambda: found.append(baseline.run(get_all())), n)
    check(found == [n], "nats-py did not read N values")
    return sql, python


def bench_files(conn: Conn, baseline: Baseline, megabytes: int) -> dict[str, tuple[float, float]]:
    content = os.urandom(megabytes * 1024 * 1024)
    digest = hashlib.sha256(content).digest()
    put_sql = timed(
        lambda: conn.execute("SELECT nats_put_file('sqlfiles', 'f', %s)", (content,)), megabytes
    )
    returned: list[bytes] = []

    def get_sql() -> None:
        row = conn.execute("SELECT nats_get_file('sqlfiles', 'f')").fetchone()
        returned.append(row[0] if row and isinstance(row[0], bytes) else b"")

    get_sql_rate = timed(get_sql, megabytes)
    check(hashlib.sha256(returned[0]).digest() == digest, "SQL get_file returned other bytes")

    async def put_py() -> None:
        store = await baseline.js.create_object_store("pyfiles")
        await store.put("f", content)

    async def get_py() -> bytes:
        store = await baseline.js.object_store("pyfiles")
        return bytes((await store.get("f")).data or b"")

    put_python = timed(lambda: baseline.run(put_py()), megabytes)
    got: list[object] = []
    get_python = timed(lambda: got.append(baseline.run(get_py())), megabytes)
    check(got == [content], "nats-py get returned other bytes")
    return {"put_file (MB/s)": (put_sql, put_python), "get_file (MB/s)": (get_sql_rate, get_python)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--file-mb", type=int, default=5)
    args = parser.parse_args()

    with temporary_stack("bench-js") as stack:
        stack.create_database("bench")
        with psycopg.connect(stack.postgres.dsn("bench"), autocommit=True) as conn:
            baseline = Baseline(stack.nats.url)
            try:
                baseline.run(baseline.js.add_stream(name=STREAM, subjects=["bench.>"]))
                conn.execute("SELECT nats_put_text('warmup', 'k', 'v')")  # import + connect
                best: dict[str, tuple[float, float]] = {}

                def keep(name: str, rates: tuple[float, float]) -> None:
                    old = best.get(name, (0.0, 0.0))
                    best[name] = (max(old[0], rates[0]), max(old[1], rates[1]))

                n = args.messages
                for round_no in range(1, args.rounds + 1):
                    keep("stream publish (msg/s)", bench_stream_publish(conn, baseline, n))
                    keep("kv put (ops/s)", bench_kv_put(conn, baseline, n, round_no))
                    keep("kv get (ops/s)", bench_kv_get(conn, baseline, n, round_no))
                    for name, rates in bench_files(conn, baseline, args.file_mb).items():
                        keep(name, rates)
            finally:
                baseline.close()

    print(
        f"JetStream from SQL vs nats-py in a plain process "
        f"({args.messages} operations per run, {args.file_mb} MB file, best of {args.rounds})"
    )
    print(f"{'operation':<24}{'SQL':>12}{'nats-py':>12}{'SQL/nats-py':>14}")
    for name, (sql, python) in best.items():
        print(f"{name:<24}{sql:>12.1f}{python:>12.1f}{sql / python:>14.2f}")


if __name__ == "__main__":
    main()
