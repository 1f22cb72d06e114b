"""Benchmark: nats_publish_text against the bound for publishing from a backend, and
nats_request_text round trips against an echo responder.

    .venv/bin/python bench/publish.py [--messages N] [--rounds R] [--requests M]

Starts a stack of its own (PostgreSQL with pgnats installed, and NATS) on free ports, and
removes it at the end.

The bound is a PL/Python function defined here: a socket cached in GD that sends PUB
frames with ``sendall`` and nothing else, no checks of any kind. It is measured twice: as
a plain socket, where the kernel's Nagle algorithm may hold a small frame back until the
server acknowledges the previous ones and then sends several in one packet; and with
TCP_NODELAY, where each frame goes on the wire when ``sendall`` returns, which is what
nats_publish_text does (every NATS client does the same), so that a message never waits
for anything once the call returned.

For comparison, nats_publish_text is also measured with Nagle left on (in a session of its
own that sets ``nats_connect.TCP_NODELAY = False`` before connecting): that is what the
choice of TCP_NODELAY costs in throughput.

Each run is ``SELECT f('bench.x', 'hello') FROM generate_series(1, N)``, and every run's N
messages must reach a subscriber or the benchmark fails. Rounds alternate between the
publishers and the best round of each counts, so all see the same machine load. The
machine being shared, it also prints messages per second of the backend's own CPU time
(median of the rounds), which leaves out the time spent waiting for a core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import nats
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.stack import Stack

SUBJECT = "bench.x"
PAYLOAD = b"hello"

BOUND_FUNCTION = """
CREATE FUNCTION {name}(subject text, payload text) RETURNS void
LANGUAGE plpython3u AS $$
if '{name}' not in GD:
    import socket
    sock = socket.create_connection(('127.0.0.1', {port}))
    sock.recv(65536)
    if {nodelay}:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b'CONNECT {{"verbose":false,"pedantic":false}}\\r\\n')
    GD['{name}'] = sock
data = payload.encode()
GD['{name}'].sendall(b'PUB %b %d\\r\\n%b\\r\\n' % (subject.encode(), len(data), data))
$$
"""

PUBLISHERS = {
    "bound": "bench_bound",
    "bound, TCP_NODELAY": "bench_bound_nodelay",
    "nats_publish_text": "nats_publish_text",
    "nats_publish_text, Nagle": "nats_publish_text",  # in a session of its own, see below
}

# For comparison only: the same nats_publish_text with Nagle's algorithm left on, in a
# session whose pgnats module is told so before it connects.
NAGLE_SESSION_SETUP = """
DO LANGUAGE plpython3u $$
plpy.execute('SELECT pgnats._load_python()')
from pgnats.backend import nats_connect
nats_connect.TCP_NODELAY = False
$$
"""


class FrameCounter:
    """A subscriber that counts the exact frames ``MSG bench.x 1 5\\r\\nhello\\r\\n`` it
    receives: any other subject, payload or a torn message would not count. Plain socket
    and ``bytes.count``, so that checking costs the machine (2 cores) little while the
    publishers run."""

    SID = b"1"

    def __init__(self, host: str, port: int) -> None:
        self.frame = b"MSG %b %b %d\r\n%b\r\n" % (SUBJECT.encode(), self.SID, len(PAYLOAD), PAYLOAD)
        self.count = 0
        self._changed = threading.Condition()
        self._sock = socket.create_connection((host, port), timeout=10)
        self._sock.recv(65536)  # INFO
        self._sock.sendall(
            b'CONNECT {"verbose":false}\r\nSUB %b %b\r\nPING\r\n' % (SUBJECT.encode(), self.SID)
        )
        if not self._read_until(b"PONG\r\n"):
            raise SystemExit("FAILED: the subscriber could not subscribe")
        self._sock.settimeout(None)
        threading.Thread(target=self._run, daemon=True).start()

    def _read_until(self, marker: bytes) -> bool:
        data = b""
        while marker not in data:
            chunk = self._sock.recv(65536)
            if not chunk:
                return False
            data += chunk
        return True

    def _run(self) -> None:
        tail = b""
        keep = len(self.frame) - 1
        while True:
            try:
                chunk = self._sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            data = tail + chunk
            found = data.count(self.frame)
            if b"PING\r\n" in data:
                self._sock.sendall(b"PONG\r\n")
            # Keep an incomplete frame at the end for the next read.
            last = data.rfind(self.frame)
            cut = last + len(self.frame) if last >= 0 else 0
            tail = data[max(cut, len(data) - keep) :]
            with self._changed:
                self.count += found
                self._changed.notify_all()

    def wait_for(self, total: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.count >= total, timeout)
            if self.count != total:
                raise SystemExit(
                    f"FAILED: the subscriber has {self.count} messages, expected {total}"
                )


def backend_cpu_seconds(pid: int) -> float:
    """CPU time the backend has used so far (its own, not time spent waiting for a core)."""
    with open(f"/proc/{pid}/schedstat") as handle:
        return int(handle.read().split()[0]) / 1e9


def publish_run(
    conn: psycopg.Connection[tuple[object, ...]], backend_pid: int, function: str, n: int
) -> tuple[float, float]:
    """Messages per second of wall time, and per second of the backend's CPU time."""
    cpu_before = backend_cpu_seconds(backend_pid)
    started = time.perf_counter()
    conn.execute(
        f"SELECT count({function}(%s, %s)) FROM generate_series(1, %s)",
        (SUBJECT, PAYLOAD.decode(), n),
    )
    elapsed = time.perf_counter() - started
    return n / elapsed, n / (backend_cpu_seconds(backend_pid) - cpu_before)


ECHO_RESPONDER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg):
        await msg.respond(msg.data)
    await nc.subscribe("bench.echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def start_echo_responder(nats_url: str) -> subprocess.Popen[bytes]:
    """nats-py in a process of its own (in a thread of ours it would share our GIL)."""
    process = subprocess.Popen(
        [sys.executable, "-c", ECHO_RESPONDER, nats_url], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        raise SystemExit("FAILED: the echo responder did not start")
    return process


def nats_py_request_rate(nats_url: str, count: int) -> float:
    """The same round trips from nats-py in a plain Python process: the baseline."""

    async def run() -> float:
        client = await nats.connect(nats_url)
        started = time.perf_counter()
        for _ in range(count):
            reply = await client.request("bench.echo", PAYLOAD, timeout=5)
            if reply.data != PAYLOAD:
                raise SystemExit("FAILED: wrong echo reply to nats-py")
        elapsed = time.perf_counter() - started
        await client.close()
        return count / elapsed

    return asyncio.run(run())


def scalar(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> object:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def request_rate(conn: psycopg.Connection[tuple[object, ...]], count: int) -> float:
    started = time.perf_counter()
    row = conn.execute(
        "SELECT count(*) FROM generate_series(1, %s) "
        "WHERE nats_request_text('bench.echo', 'hello') = 'hello'::bytea",
        (count,),
    ).fetchone()
    elapsed = time.perf_counter() - started
    if row is None or row[0] != count:
        raise SystemExit(f"FAILED: {row} of {count} echo replies were right")
    return count / elapsed


LABELS = {
    "bound": "bound (raw socket sendall, no checks)",
    "bound, TCP_NODELAY": "bound with TCP_NODELAY",
    "nats_publish_text": "nats_publish_text",
    "nats_publish_text, Nagle": "nats_publish_text with Nagle on",
}


RATIOS = (
    ("nats_publish_text", "bound"),
    ("nats_publish_text", "bound, TCP_NODELAY"),
    ("nats_publish_text, Nagle", "bound"),
)


def report(rates: dict[str, float]) -> None:
    for name, label in LABELS.items():
        print(f"  {label:<50} {rates[name]:>10,.0f} msgs/s")
    for ours, bound in RATIOS:
        label = f"ratio {LABELS[ours]} / {bound}"
        print(f"  {label:<50} {rates[ours] / rates[bound]:>10.1%}")


def report_round_ratios(wall_rates: dict[str, list[float]]) -> None:
    """Each round runs every publisher back to back, so a ratio within one round compares
    like with like; the median over the rounds is the steadiest wall-clock figure."""
    for ours, bound in RATIOS:
        ratios = [a / b for a, b in zip(wall_rates[ours], wall_rates[bound], strict=True)]
        label = f"ratio {LABELS[ours]} / {bound}"
        spread = f"(rounds: {min(ratios):.0%} to {max(ratios):.0%})"
        print(f"  {label:<50} {statistics.median(ratios):>10.1%}  {spread}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="N per publish run")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()

    stack = Stack(name=f"bench-{os.getpid()}", pg_settings={"fsync": "off"})
    responder: subprocess.Popen[bytes] | None = None
    try:
        stack.up()
        nats_url = stack.nats.url
        with (
            psycopg.connect(stack.postgres.dsn(), autocommit=True) as conn,
            psycopg.connect(stack.postgres.dsn(), autocommit=True) as nagle_conn,
        ):
            conn.execute("CREATE EXTENSION pgnats CASCADE")
            conn.execute(
                "CREATE SERVER nats_server FOREIGN DATA WRAPPER pgnats_fdw "
                f"OPTIONS (nats_url '{nats_url}')"
            )
            for name, nodelay in (("bench_bound", False), ("bench_bound_nodelay", True)):
                conn.execute(
                    BOUND_FUNCTION.format(name=name, port=stack.nats.port, nodelay=nodelay)
                )
            counter = FrameCounter("127.0.0.1", stack.nats.port)

            expected = 0
            nagle_conn.execute(NAGLE_SESSION_SETUP)
            sessions = {
                name: (nagle_conn if name.endswith("Nagle") else conn) for name in PUBLISHERS
            }
            pids = {
                name: int(str(scalar(session, "SELECT pg_backend_pid()")))
                for name, session in sessions.items()
            }
            for name, function in PUBLISHERS.items():  # connect and warm up, untimed
                publish_run(sessions[name], pids[name], function, 100)
                expected += 100
            counter.wait_for(expected, 30)

            best = dict.fromkeys(PUBLISHERS, 0.0)
            cpu_rates: dict[str, list[float]] = {name: [] for name in PUBLISHERS}
            wall_rates: dict[str, list[float]] = {name: [] for name in PUBLISHERS}
            for round_number in range(1, args.rounds + 1):
                for name, function in PUBLISHERS.items():
                    rate, cpu_rate = publish_run(
                        sessions[name], pids[name], function, args.messages
                    )
                    expected += args.messages
                    counter.wait_for(expected, 60)
                    best[name] = max(best[name], rate)
                    cpu_rates[name].append(cpu_rate)
                    wall_rates[name].append(rate)
                    print(
                        f"round {round_number}: {name:<25} {rate:>9,.0f} msgs/s, "
                        f"{cpu_rate:>10,.0f} per backend CPU second (all received)"
                    )

            responder = start_echo_responder(nats_url)
            request_rate(conn, 100)  # warm up
            sql_requests = max(request_rate(conn, args.requests) for _ in range(3))
            py_requests = max(nats_py_request_rate(nats_url, args.requests) for _ in range(3))

        print()
        print(f"publish: {args.messages:,} messages per run, best of {args.rounds} rounds")
        report(best)
        print("publish, wall clock: median of the ratios within each round")
        report_round_ratios(wall_rates)
        # The machine is shared: CPU time per message does not count waiting for a core.
        print("publish per second of the backend's CPU time (median of the rounds)")
        report({name: statistics.median(rates) for name, rates in cpu_rates.items()})
        print(f"request: {args.requests:,} round trips per run against a nats-py echo, best of 3")
        print(f"  nats_request_text                       {sql_requests:>10,.0f} round trips/s")
        print(f"  nats-py request (plain Python process)  {py_requests:>10,.0f} round trips/s")
        print(f"  ratio nats_request_text / nats-py       {sql_requests / py_requests:>10.1%}")
    finally:
        if responder is not None:
            responder.kill()
            responder.wait()
        stack.destroy()


if __name__ == "__main__":
    main()
