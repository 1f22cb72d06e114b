"""Reloads while messages flow: the worker makes its new NATS connection before it lets go
of the old one (make-before-break, in a queue group of the database's own), so that no
message published meanwhile is lost or processed twice."""

from __future__ import annotations

import asyncio
import threading
import time

import nats

from devstack.worker import WorkerProcess
from tests.worker.conftest import (
    Conn,
    make_log_table,
    publish,
    scalar,
    wait_subscribed,
    wait_until,
    wait_value,
)

HANDED_OVER = "now receiving through the new NATS connection"


class SteadyPublisher:
    """Publishes "1", "2", ... to ``subject`` at about ``rate`` messages a second, from a
    thread of its own, until stopped."""

    def __init__(self, url: str, subject: str, rate: int = 1000) -> None:
        self.url = url
        self.subject = subject
        self.rate = rate
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._at_least = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, at_least: int = 0, timeout: float = 10.0) -> int:
        """Stop once ``at_least`` messages are out; the number of messages published (all
        flushed to the server)."""
        self._at_least = at_least
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the publisher did not stop"
        if self.error is not None:
            raise self.error
        return self.sent

    def _run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:  # noqa: BLE001 - re-raised in stop()
            self.error = exc

    async def _publish(self) -> None:
        client = await nats.connect(self.url, connect_timeout=5, allow_reconnect=False)
        try:
            tick = 0.01
            per_tick = max(1, round(self.rate * tick))
            started = time.monotonic()
            while not self._stop.is_set() or self.sent < self._at_least:
                for _ in range(per_tick):
                    self.sent += 1
                    await client.publish(self.subject, str(self.sent).encode())
                await client.flush(timeout=5)
                # Keep to the rate whatever the publishing itself costs.
                ahead = started + self.sent / self.rate - time.monotonic()
                await asyncio.sleep(max(ahead, 0))
        finally:
            await client.close()


def assert_each_committed_once(conn: Conn, sent: int) -> None:
    """Messages "1" to ``sent`` each have exactly one row."""
    wait_value(conn, "SELECT count(*) >= %s FROM message_log", True, timeout=20, params=(sent,))
    numbers = [int(row[0]) for row in conn.execute("SELECT message FROM message_log")]
    assert sorted(numbers) == list(range(1, sent + 1))


def test_reloads_while_messages_flow_lose_nothing(
    conn: Conn, nats_url: str, worker: WorkerProcess, db: str
) -> None:
    make_log_table(conn)
    conn.execute("SELECT nats_subscribe('steady', 'log_message'::regproc)")
    wait_subscribed(conn, "steady")
    publisher = SteadyPublisher(nats_url, "steady")
    publisher.start()
    try:
        wait_value(conn, "SELECT count(*) > 100 FROM message_log", True)
        reloads = [
            "SELECT pgnats_reload_conf_force()",
            "SELECT pgnats_reload_conf_force()",
            "ALTER SERVER nats_server OPTIONS (ADD connect_timeout '3000')",
            "SELECT pgnats_reload_conf()",
            "SELECT pgnats_reload_conf_force()",
            "SELECT pgnats_reload_conf_force()",
        ]
        done = 0
        for statement in reloads:
            conn.execute(statement)
            if statement.startswith("ALTER"):
                continue  # the worker sees it at the next reconcile or pgnats_reload_conf()
            done += 1
            wait_until(
                lambda: worker.log_text().count(HANDED_OVER) >= done,  # noqa: B023
                what=f"handover {done}",
            )
            # The subscription never looked unsubscribed meanwhile.
            assert scalar(conn, "SELECT subscribed FROM pgnats.subscription_status")
        time.sleep(0.3)  # messages after the last reload too
    finally:
        sent = publisher.stop(at_least=2000)
        assert_each_committed_once(conn, sent)
    log = worker.log_text()
    assert log.count(f"database={db}: reconnecting to NATS (pgnats_reload_conf_force())") == 4
    assert log.count(f"database={db}: reconnecting to NATS (settings changed)") == 1


def test_guide_troubleshooting_publish_right_after_a_forced_reload(
    conn: Conn, nats_url: str, worker: WorkerProcess
) -> None:
    """The guide's "Troubleshooting": pgnats_reload_conf_force(), then a publish at once."""
    make_log_table(conn)
    conn.execute("SELECT nats_subscribe('demo.messages', 'log_message'::regproc)")
    wait_subscribed(conn, "demo.messages")
    for number in range(1, 6):
        conn.execute("SELECT pgnats_reload_conf_force()")
        conn.execute("SELECT nats_publish_text('demo.messages', %s, NULL, NULL)", (str(number),))
        time.sleep(0.1)
    publish(nats_url, "demo.messages", ["6"])
    assert_each_committed_once(conn, 6)
