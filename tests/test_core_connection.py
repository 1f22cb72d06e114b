"""The session's NATS connection: made on first use, re-made when the server restarted, when
it dropped the idle connection, or when the settings changed; bounded when NATS is away."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devstack.nats import NatsServer
from devstack.ports import free_port
from devstack.stack import Stack
from tests.conftest import MakeDatabase, admin_connect
from tests.nats_helpers import NatsSide, echo
from tests.queries import Conn, client_id, scalar


@pytest.fixture
def private_conn(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer
) -> Iterator[Conn]:
    """A session of a database whose server is ``private_nats``."""
    with admin_connect(stack, make_database(nats_url=private_nats.url)) as conn:
        yield conn


def test_server_restart_between_two_publishes(
    private_conn: Conn, private_nats: NatsServer, nats_side: NatsSide
) -> None:
    received = nats_side.subscribe(private_nats.url, "r.>")
    private_conn.execute("SELECT nats_publish_text('r.before', '1')")
    assert received.next().data == b"1"
    private_nats.restart()
    received = nats_side.subscribe(private_nats.url, "r.>")
    private_conn.execute("SELECT nats_publish_text('r.after', '2')")
    message = received.next(timeout=3)
    assert (message.subject, message.data) == ("r.after", b"2")


def test_publish_after_the_server_dropped_the_idle_connection(
    stack: Stack, make_database: MakeDatabase, tmp_path: Path, nats_side: NatsSide
) -> None:
    server = NatsServer(
        port=free_port(),
        workdir=tmp_path / "nats",
        ping_interval="1s",
        ping_max=1,
        extra_config="debug: true",
    )
    server.start()
    try:
        with admin_connect(stack, make_database(nats_url=server.url)) as conn:
            received = nats_side.subscribe(server.url, "idle.>")
            conn.execute("SELECT nats_publish_text('idle.first', '1')")
            first_client = client_id(conn)
            # Unanswered PINGs: the server closes the connection after about 2 s.
            time.sleep(3.5)
            assert "Stale Client Connection - Closing" in server.log_path.read_text()
            conn.execute("SELECT nats_publish_text('idle.second', '2')")
            assert [m.data for m in received.take(2)] == [b"1", b"2"]
            assert client_id(conn) != first_client
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def test_request_and_server_info_after_a_restart(
    private_conn: Conn, private_nats: NatsServer, nats_side: NatsSide
) -> None:
    server_id = "SELECT (nats_get_server_info()).server_id"
    first_run = scalar(private_conn, server_id)
    private_nats.restart()
    assert scalar(private_conn, server_id) != first_run  # a new connection to the new run
    nats_side.respond(private_nats.url, "svc.echo", echo)
    assert scalar(private_conn, "SELECT nats_request_text('svc.echo', 'x')") == b"x"


def test_nats_down_is_an_error_and_then_it_recovers(
    private_conn: Conn, private_nats: NatsServer, nats_side: NatsSide
) -> None:
    private_conn.execute("SELECT nats_publish_text('down.before', '1')")
    private_nats.kill()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="could not connect to NATS") as excinfo:
        private_conn.execute("SELECT nats_publish_text('down.during', '2')")
    assert excinfo.value.sqlstate == "08001"
    assert time.monotonic() - started < 1
    private_nats.start()
    received = nats_side.subscribe(private_nats.url, "down.>")
    private_conn.execute("SELECT nats_publish_text('down.after', '3')")
    message = received.next()
    assert (message.subject, message.data) == ("down.after", b"3")
    received.assert_empty(0.2)


def test_unreachable_nats_fails_at_once(stack: Stack, make_database: MakeDatabase) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with admin_connect(stack, make_database(nats_url=url)) as conn:
        for call in (
            "nats_publish_text('a.b', 'x')",
            "nats_request_text('a.b', 'x')",
            "nats_get_server_info()",
        ):
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as excinfo:
                conn.execute(f"SELECT {call}")
            assert time.monotonic() - started < 1
            assert excinfo.value.sqlstate == "08001"
            message = str(excinfo.value)
            assert message.startswith(f"pgnats: could not connect to NATS at {url}: ")
            assert "refused" in message


class SilentServer:
    """Accepts TCP connections and never says a word: a NATS server that hangs."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(client)

    def close(self) -> None:
        self.listener.close()
        for client in self.accepted:
            client.close()


def test_hanging_server_errors_within_the_connect_timeout(
    stack: Stack, make_database: MakeDatabase
) -> None:
    silent = SilentServer()
    try:
        name = make_database(nats_url=f"nats://127.0.0.1:{silent.port}")
        with admin_connect(stack, name) as conn:
            conn.execute("ALTER SERVER nats_server OPTIONS (ADD connect_timeout '400')")
            conn.execute("SELECT pgnats_reload_conf()")
            started = time.monotonic()
            with pytest.raises(
                psycopg.OperationalError, match="timed out waiting for the server's INFO"
            ):
                conn.execute("SELECT nats_publish_text('a.b', 'x')")
            assert 0.39 < time.monotonic() - started < 0.8
    finally:
        silent.close()


def test_cancel_while_connecting(stack: Stack, make_database: MakeDatabase) -> None:
    silent = SilentServer()
    try:
        name = make_database(nats_url=f"nats://127.0.0.1:{silent.port}")
        with admin_connect(stack, name) as conn:
            conn.execute("ALTER SERVER nats_server OPTIONS (ADD connect_timeout '10000')")
            conn.execute("SET statement_timeout = '300ms'")
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT nats_publish_text('a.b', 'x')")
            assert time.monotonic() - started < 0.3 + 0.15
    finally:
        silent.close()


def test_second_url_is_used_when_the_first_is_down(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer, nats_side: NatsSide
) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    with admin_connect(stack, make_database(nats_url=f"{dead},{private_nats.url}")) as conn:
        received = nats_side.subscribe(private_nats.url, "two.>")
        conn.execute("SELECT nats_publish_text('two.urls', 'x')")
        assert received.next().data == b"x"
        assert scalar(conn, "SELECT (nats_get_server_info()).port") == private_nats.port


def test_host_name_is_resolved(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer, nats_side: NatsSide
) -> None:
    received = nats_side.subscribe(private_nats.url, "named.>")
    with admin_connect(
        stack, make_database(nats_url=f"nats://localhost:{private_nats.port}")
    ) as conn:
        conn.execute("SELECT nats_publish_text('named.host', 'x')")
        assert received.next().data == b"x"


def test_unknown_host_is_named(stack: Stack, make_database: MakeDatabase) -> None:
    with (
        admin_connect(stack, make_database(nats_url="nats://no-such-host.invalid:4222")) as conn,
        pytest.raises(
            psycopg.OperationalError, match=r"cannot resolve host 'no-such-host\.invalid'"
        ),
    ):
        conn.execute("SELECT nats_publish_text('a.b', 'x')")


def test_every_url_failing_names_each(stack: Stack, make_database: MakeDatabase) -> None:
    first, second = (f"nats://127.0.0.1:{free_port()}" for _ in range(2))
    with (
        admin_connect(stack, make_database(nats_url=f"{first},{second}")) as conn,
        pytest.raises(psycopg.OperationalError) as excinfo,
    ):
        conn.execute("SELECT nats_publish_text('a.b', 'x')")
    message = str(excinfo.value)
    assert message.startswith("pgnats: could not connect to any NATS server")
    assert first in message and second in message


# -- settings and reload ----------------------------------------------------------------


def test_reload_conf_moves_to_the_new_server(
    conn: Conn, nats_url: str, private_nats: NatsServer, nats_side: NatsSide
) -> None:
    on_session_nats = nats_side.subscribe(nats_url, "moved.>")
    on_private_nats = nats_side.subscribe(private_nats.url, "moved.>")
    conn.execute("SELECT nats_publish_text('moved.before', '1')")
    assert on_session_nats.next().data == b"1"
    conn.execute(f"ALTER SERVER nats_server OPTIONS (SET nats_url '{private_nats.url}')")
    conn.execute("SELECT pgnats_reload_conf()")
    conn.execute("SELECT nats_publish_text('moved.after', '2')")
    assert on_private_nats.next().data == b"2"
    on_session_nats.assert_empty(0.2)


def test_settings_changed_in_this_session_apply_at_once(
    stack: Stack, db: str, conn: Conn, private_nats: NatsServer, nats_side: NatsSide
) -> None:
    """DDL on the server or a user mapping drops the session's cached settings (event
    trigger) and tells the worker at commit: no reload, no waiting."""
    on_private_nats = nats_side.subscribe(private_nats.url, "now.>")
    conn.execute("SELECT nats_publish_text('now.before', '1')")
    with psycopg.connect(stack.postgres.dsn(db), autocommit=True) as listener:
        listener.execute("LISTEN pgnats")
        conn.execute(f"ALTER SERVER nats_server OPTIONS (SET nats_url '{private_nats.url}')")
        conn.execute("SELECT nats_publish_text('now.after', '2')")
        assert on_private_nats.next(timeout=2).data == b"2"
        conn.execute("CREATE USER MAPPING FOR CURRENT_USER SERVER nats_server")
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=2)]
    assert payloads == ["reload", "reload"]


def test_changed_settings_are_noticed_without_reload(
    stack: Stack, db: str, conn: Conn, private_nats: NatsServer, nats_side: NatsSide
) -> None:
    on_private_nats = nats_side.subscribe(private_nats.url, "later.>")
    conn.execute("SELECT nats_publish_text('later.before', '1')")
    with admin_connect(stack, db) as other:
        other.execute(f"ALTER SERVER nats_server OPTIONS (SET nats_url '{private_nats.url}')")
    time.sleep(1.1)  # settings are re-read when older than a second
    conn.execute("SELECT nats_publish_text('later.after', '2')")
    assert on_private_nats.next().data == b"2"


def test_reload_conf_keeps_an_unchanged_connection(conn: Conn) -> None:
    before = client_id(conn)
    conn.execute("SELECT pgnats_reload_conf()")
    assert client_id(conn) == before


def test_reload_conf_force_reconnects(conn: Conn, nats_url: str, nats_side: NatsSide) -> None:
    received = nats_side.subscribe(nats_url, "forced.>")
    before = client_id(conn)
    conn.execute("SELECT pgnats_reload_conf_force()")
    conn.execute("SELECT nats_publish_text('forced.after', 'x')")
    assert received.next().data == b"x"
    assert client_id(conn) != before


def test_reloads_notify_the_worker(stack: Stack, db: str, conn: Conn) -> None:
    with psycopg.connect(stack.postgres.dsn(db), autocommit=True) as listener:
        listener.execute("LISTEN pgnats")
        conn.execute("SELECT pgnats_reload_conf()")
        conn.execute("SELECT pgnats_reload_conf_force()")
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=2)]
    assert payloads == ["reload", "reload_force"]


def test_reload_notification_waits_for_commit(stack: Stack, db: str, conn: Conn) -> None:
    with psycopg.connect(stack.postgres.dsn(db), autocommit=True) as listener:
        listener.execute("LISTEN pgnats")
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT pgnats_reload_conf()")
        assert list(listener.notifies(timeout=0.3)) == []


# -- server info ----------------------------------------------------------------------------


def test_server_info_row(conn: Conn, stack: Stack) -> None:
    cursor = conn.execute("SELECT * FROM nats_get_server_info()")
    row = cursor.fetchone()
    assert row is not None and cursor.description is not None
    info = dict(zip([c.name for c in cursor.description], row, strict=True))
    assert set(info) == {
        "server_id", "server_name", "version", "go", "host", "port", "headers", "max_payload",
        "proto", "client_id", "client_ip", "nonce", "auth_required", "tls_required",
        "tls_verify", "jetstream", "lame_duck_mode", "cluster", "domain", "git_commit",
        "connect_urls", "ws_connect_urls",
    }  # fmt: skip
    assert str(info["server_id"]).startswith("N")
    assert info["version"] == "2.15.1"
    assert str(info["go"]).startswith("go")
    assert info["host"] == "127.0.0.1"
    assert info["port"] == stack.nats.port
    assert info["headers"] is True
    assert info["max_payload"] == 1024 * 1024
    assert info["proto"] == 1
    assert isinstance(info["client_id"], int)
    assert info["client_ip"] == "127.0.0.1"
    assert info["jetstream"] is True
    assert info["auth_required"] is False
    assert info["tls_required"] is False
    assert info["lame_duck_mode"] is False
    # A lone server says nothing of a cluster or other URLs.
    assert info["cluster"] is None
    assert info["connect_urls"] is None
    assert info["ws_connect_urls"] is None


def test_server_info_as_in_the_guide(conn: Conn) -> None:
    row = conn.execute(
        "SELECT (nats_get_server_info()).version AS nats_version, "
        "(nats_get_server_info()).max_payload AS max_message_size"
    ).fetchone()
    assert row == ("2.15.1", 1024 * 1024)


def test_server_info_follows_the_server_into_lame_duck_mode(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer
) -> None:
    """The server announces lame duck mode in a new INFO; the row shows the latest INFO."""
    private_nats.extra_config = 'lame_duck_duration: "30s"\nlame_duck_grace_period: "20s"'
    private_nats.restart()
    lame = "SELECT (nats_get_server_info()).lame_duck_mode"
    with admin_connect(stack, make_database(nats_url=private_nats.url)) as conn:
        assert scalar(conn, lame) is False
        pid = private_nats._pid()
        assert pid is not None
        os.kill(pid, signal.SIGUSR2)  # nats-server's signal for lame duck mode
        deadline = time.monotonic() + 5
        while scalar(conn, lame) is not True:
            assert time.monotonic() < deadline, "lame duck mode not reported"
            time.sleep(0.1)
    private_nats.kill()


def test_server_info_of_a_cluster_lists_its_urls(
    stack: Stack, make_database: MakeDatabase, tmp_path: Path
) -> None:
    ports = [free_port() for _ in range(4)]
    servers = [
        NatsServer(
            port=ports[i],
            workdir=tmp_path / f"n{i}",
            jetstream=False,
            extra_config=(
                f'server_name: "n{i}"\n'
                f'cluster {{ name: "c1", listen: "127.0.0.1:{ports[2 + i]}", '
                f'routes: ["nats-route://127.0.0.1:{ports[3 - i]}"] }}'
            ),
        )
        for i in range(2)
    ]
    for server in servers:
        server.start()
    try:
        with admin_connect(stack, make_database(nats_url=servers[0].url)) as conn:
            deadline = time.monotonic() + 10
            while True:
                row = conn.execute(
                    "SELECT (i).cluster, (i).connect_urls FROM nats_get_server_info() i"
                ).fetchone()
                assert row is not None
                if row[1] is not None and len(row[1]) == 2:  # type: ignore[arg-type]
                    break
                assert time.monotonic() < deadline, f"cluster not formed: {row}"
                time.sleep(0.2)
        assert row[0] == "c1"
        assert sorted(row[1]) == sorted(f"127.0.0.1:{p}" for p in ports[:2])  # type: ignore[call-overload]
    finally:
        for server in servers:
            server.stop()
