"""Reloads while messages flow: the worker makes its new NATS connection before it lets go
of the old one (make-before-break, in a queue group of the database's own), so that no
message published meanwhile is lost or processed twice."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import nats
import pytest
from pgnats_worker.handover import PROBE_TIMEOUT
from pgnats_worker.nats_link import queue_for

from devstack.nats import NatsServer
from devstack.ports import free_port
from devstack.stack import Stack
from devstack.worker import WorkerProcess
from tests.conftest import MakeDatabase, admin_connect
from tests.tcp_delay import DelayProxy
from tests.worker.conftest import (
    Conn,
    StartWorker,
    make_log_table,
    messages,
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
        except BaseException as exc:  # re-raised in stop()
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
            # The worker never reported itself unsubscribed meanwhile.
            assert scalar(
                conn,
                "SELECT nats_connected AND 'steady' = ANY (subscribed) FROM pgnats.worker_status",
            )
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


def handed_over(worker: WorkerProcess, times: int) -> bool:
    return worker.log_text().count(HANDED_OVER) >= times


def test_a_catch_all_subscription_never_sees_the_workers_probes(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer, worker: WorkerProcess
) -> None:
    """Handovers publish probes to _INBOX subjects; a callback subscribed to > (on a NATS of
    this test's own, so that only the test's messages travel there) gets only real ones."""
    with admin_connect(stack, make_database(nats_url=private_nats.url)) as conn:
        make_log_table(conn)
        conn.execute("SELECT nats_subscribe('>', 'log_message'::regproc)")
        wait_subscribed(conn, ">")
        for number in range(1, 4):
            conn.execute("SELECT pgnats_reload_conf_force()")
            wait_until(partial(handed_over, worker, number), what="handover")
            publish(private_nats.url, "real.message", [str(number)])
        wait_value(conn, "SELECT count(*) FROM message_log", 3)
        time.sleep(0.3)  # time for a stray probe to arrive
        assert messages(conn) == ["1", "2", "3"]


# -- queue groups -----------------------------------------------------------------------


@pytest.fixture
def monitored_nats(private_nats: NatsServer) -> tuple[NatsServer, int]:
    """``private_nats`` with its HTTP monitoring port (the second value) open."""
    http_port = free_port()
    private_nats.extra_config = f"http: 127.0.0.1:{http_port}"
    private_nats.restart()
    return private_nats, http_port


def queue_groups(http_port: int, subject: str) -> list[str]:
    """The queue groups of the subscriptions to ``subject``, as the server lists them."""
    url = f"http://127.0.0.1:{http_port}/connz?subs=detail"
    with urllib.request.urlopen(url, timeout=5) as response:
        connections = json.load(response)["connections"] or []
    return sorted(
        sub.get("qgroup", "")
        for connection in connections
        for sub in connection.get("subscriptions_list_detail") or []
        if sub["subject"] == subject
    )


def test_two_databases_each_get_every_message_in_queue_groups_of_their_own(
    stack: Stack,
    make_database: MakeDatabase,
    monitored_nats: tuple[NatsServer, int],
    worker: WorkerProcess,
) -> None:
    server, http_port = monitored_nats
    names = [make_database(nats_url=server.url), make_database(nats_url=server.url)]
    sent = [str(number) for number in range(1, 201)]
    expected_groups = []
    for name in names:
        with admin_connect(stack, name) as conn:
            make_log_table(conn)
            conn.execute("SELECT nats_subscribe('shared.subject', 'log_message'::regproc)")
            wait_subscribed(conn, "shared.subject")
            expected_groups.append(
                scalar(
                    conn,
                    "SELECT 'pgnats.' || system_identifier || '.' || "
                    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "FROM pg_control_system()",
                )
            )
            wait_value(
                conn, "SELECT nats_queue_group FROM pgnats.worker_status", expected_groups[-1]
            )
    assert expected_groups[0] != expected_groups[1]
    # The server sees one group per database and subscribed subject (pgnats_worker.nats_link).
    assert queue_groups(http_port, "shared.subject") == sorted(
        queue_for(prefix, "shared.subject") for prefix in expected_groups
    )
    publish(server.url, "shared.subject", sent)
    for name in names:
        with admin_connect(stack, name) as conn:
            assert_each_committed_once(conn, len(sent))


# -- a cluster ----------------------------------------------------------------------------


# Each way, on the route between the two servers of nats_cluster.
ROUTE_DELAY = 0.25


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[tuple[NatsServer, NatsServer]]:
    """Two NATS servers of one cluster, whose route is slow (ROUTE_DELAY each way): a
    subscription made at one server is known at the other only that much later."""
    b_route_port = free_port()
    proxy = DelayProxy(b_route_port, ROUTE_DELAY)
    a = NatsServer(port=free_port(), workdir=tmp_path / "nats-a", jetstream=False)
    b = NatsServer(port=free_port(), workdir=tmp_path / "nats-b", jetstream=False)
    a.extra_config = (
        'server_name: "a"\n'
        f'cluster {{ name: "pgnats-test", listen: "127.0.0.1:{free_port()}", '
        f'routes: ["nats-route://127.0.0.1:{proxy.port}"] }}'
    )
    b.extra_config = (
        f'server_name: "b"\ncluster {{ name: "pgnats-test", listen: "127.0.0.1:{b_route_port}" }}'
    )
    proxy.start()
    try:
        b.start()
        a.start()
        wait_routed(a.url, b.url)
        yield a, b
    finally:
        for server in (a, b):
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
        proxy.stop()


def wait_routed(from_url: str, to_url: str, timeout: float = 10.0) -> None:
    """Until a message published at ``from_url`` reaches a subscriber at ``to_url``."""

    async def probe() -> None:
        sender = await nats.connect(from_url, connect_timeout=5)
        receiver = await nats.connect(to_url, connect_timeout=5)
        try:
            subscription = await receiver.subscribe("route.probe")
            await receiver.flush()
            deadline = time.monotonic() + timeout
            while True:
                await sender.publish("route.probe", b"")
                await sender.flush()
                try:
                    await subscription.next_msg(timeout=0.1)
                    return
                except nats.errors.TimeoutError:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the NATS servers did not form a cluster") from None
        finally:
            await sender.close()
            await receiver.close()

    asyncio.run(probe())


def test_moving_to_another_server_of_the_cluster_loses_nothing(
    stack: Stack,
    make_database: MakeDatabase,
    nats_cluster: tuple[NatsServer, NatsServer],
    worker: WorkerProcess,
) -> None:
    """The stream is published at server a; the worker moves from a to b and back. The old
    connection lets go only once the new one's subscriptions are known at a, a quarter of
    a second after they were made at b."""
    a, b = nats_cluster
    with admin_connect(stack, make_database(nats_url=a.url)) as conn:
        make_log_table(conn)
        conn.execute("SELECT nats_subscribe('steady', 'log_message'::regproc)")
        wait_subscribed(conn, "steady")
        publisher = SteadyPublisher(a.url, "steady")
        publisher.start()
        try:
            wait_value(conn, "SELECT count(*) > 100 FROM message_log", True)
            for handovers, server in enumerate((b, a, b), start=1):
                conn.execute(f"ALTER SERVER nats_server OPTIONS (SET nats_url '{server.url}')")
                conn.execute("SELECT pgnats_reload_conf()")
                wait_until(
                    lambda: worker.log_text().count(HANDED_OVER) >= handovers,  # noqa: B023
                    what=f"handover {handovers}",
                )
                wait_value(conn, "SELECT nats_server FROM pgnats.worker_status", server.url)
            time.sleep(0.3)
        finally:
            sent = publisher.stop(at_least=2000)
        assert_each_committed_once(conn, sent)
    assert "did not reach the new one" not in worker.log_text()


def test_handover_without_permission_for_inbox_subjects(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer, start_worker: StartWorker
) -> None:
    """A worker whose NATS user may use its subjects only (no _INBOX.> for the probe)
    still hands over at once, and without warnings."""
    private_nats.extra_config = """authorization { users = [
        {user: worker, password: w, permissions: {subscribe: "perm.>", publish: "perm.>"}}
        {user: publisher, password: p}
    ] }"""
    private_nats.restart()
    with admin_connect(stack, make_database(nats_url=private_nats.url)) as conn:
        conn.execute(
            "CREATE USER MAPPING FOR PUBLIC SERVER nats_server "
            "OPTIONS (user 'worker', password 'w')"
        )
        make_log_table(conn)
        conn.execute("SELECT nats_subscribe('perm.steady', 'log_message'::regproc)")
        worker = start_worker()
        wait_subscribed(conn, "perm.steady")
        publisher = SteadyPublisher(
            f"nats://publisher:p@127.0.0.1:{private_nats.port}", "perm.steady"
        )
        publisher.start()
        try:
            wait_value(conn, "SELECT count(*) > 100 FROM message_log", True)
            for handovers in (1, 2):
                started = time.monotonic()
                conn.execute("SELECT pgnats_reload_conf_force()")
                wait_until(
                    lambda: worker.log_text().count(HANDED_OVER) >= handovers,  # noqa: B023
                    what=f"handover {handovers}",
                )
                assert time.monotonic() - started < PROBE_TIMEOUT  # not waited for
        finally:
            sent = publisher.stop(at_least=1000)
        assert_each_committed_once(conn, sent)
    log = worker.log_text()
    assert "NATS probe refused" in log
    assert "NATS error" not in log


def test_settings_changed_without_a_reload_are_picked_up(
    conn: Conn, private_nats: NatsServer, worker: WorkerProcess, db: str
) -> None:
    """ALTER SERVER alone: the worker moves at its next reconcile (1 s in these tests), as
    a backend does within a second, without waiting for pgnats_reload_conf()."""
    make_log_table(conn)
    conn.execute("SELECT nats_subscribe('moved', 'log_message'::regproc)")
    wait_subscribed(conn, "moved")
    conn.execute(f"ALTER SERVER nats_server OPTIONS (SET nats_url '{private_nats.url}')")
    wait_value(conn, "SELECT nats_server FROM pgnats.worker_status", private_nats.url)
    publish(private_nats.url, "moved", ["on the new server"])
    wait_value(conn, "SELECT count(*) FROM message_log", 1)
    worker.wait_for_log(f"database={db}: reconnecting to NATS (settings changed)")


def worker_connections(http_port: int, db: str) -> list[list[str]]:
    """The subjects subscribed by each connection of the worker for ``db``."""
    url = f"http://127.0.0.1:{http_port}/connz?subs=detail"
    with urllib.request.urlopen(url, timeout=5) as response:
        connections = json.load(response)["connections"] or []
    return [
        sorted(sub["subject"] for sub in connection.get("subscriptions_list_detail") or [])
        for connection in connections
        if connection.get("name") == f"pgnats-worker {db}"
    ]


def test_reloads_in_a_row_and_while_nats_is_down_leave_one_connection(
    stack: Stack,
    make_database: MakeDatabase,
    monitored_nats: tuple[NatsServer, int],
    worker: WorkerProcess,
) -> None:
    server, http_port = monitored_nats
    db = make_database(nats_url=server.url)
    with admin_connect(stack, db) as conn:
        make_log_table(conn)
        conn.execute("SELECT nats_subscribe('kept', 'log_message'::regproc)")
        wait_subscribed(conn, "kept")
        for _ in range(3):
            conn.execute("SELECT pgnats_reload_conf_force()")
        wait_until(lambda: worker_connections(http_port, db) == [["kept"]], what="one connection")
        server.kill()
        # While NATS is down: the second reload replaces the connection the first one is
        # still trying to make.
        reconnecting = f"database={db}: reconnecting to NATS (pgnats_reload_conf_force())"
        for _ in range(2):
            before = worker.log_text().count(reconnecting)
            conn.execute("SELECT pgnats_reload_conf_force()")
            wait_until(lambda: worker.log_text().count(reconnecting) > before, what=reconnecting)  # noqa: B023
        server.start()
        wait_until(lambda: worker_connections(http_port, db) == [["kept"]], what="one connection")
        wait_subscribed(conn, "kept")
        publish(server.url, "kept", ["1", "2", "3"])
        assert_each_committed_once(conn, 3)
