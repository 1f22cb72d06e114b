"""JetStream calls when things go wrong: NATS down, restarted, frozen, dropping idle clients,
JetStream disabled, slow acks under statement_timeout and pg_cancel_backend."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from devstack.nats import NatsServer
from devstack.ports import free_port
from devstack.stack import Stack
from tests.conftest import MakeDatabase, admin_connect
from tests.jetstream_support import (
    Conn,
    add_stream,
    assert_sql_error,
    scalar,
    stream_messages,
    unique,
)


@contextmanager
def connect_to(stack: Stack, make_database: MakeDatabase, url: str) -> Iterator[Conn]:
    """A connection to a new database whose pgnats_fdw server points at ``url``."""
    with admin_connect(stack, make_database(nats_url=url)) as conn:
        yield conn


def set_server_option(conn: Conn, option: str, value: str) -> None:
    conn.execute(f"ALTER SERVER nats_server OPTIONS (ADD {option} '{value}')")


@contextmanager
def silent_subscriber(url: str, subject: str) -> Iterator[None]:
    """A core NATS client subscribed to ``subject`` that never answers: a JetStream publish
    to ``subject`` is delivered to it and waits for an ack that never comes."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(f'CONNECT {{"verbose":false}}\r\nSUB {subject} 1\r\nPING\r\n'.encode())
        received = b""
        while b"PONG" not in received:
            received += sock.recv(4096)
        yield


def freeze(server: NatsServer) -> int:
    """SIGSTOP ``server`` and wait until every thread of it has stopped."""
    pid = server._pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = [
            stat.read_text().rsplit(")", 1)[1].split()[0]
            for stat in Path(f"/proc/{pid}/task").glob("*/stat")
        ]
        if states and all(state in ("T", "t") for state in states):
            return pid
        time.sleep(0.01)
    raise TimeoutError(f"nats-server {pid} did not stop")


@pytest.fixture
def plain_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A NATS server without JetStream."""
    server = NatsServer(port=free_port(), workdir=tmp_path / "plain", jetstream=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    "query",
    [
        "SELECT nats_publish_text_stream('orders.new', 'x')",
        "SELECT nats_put_text('b', 'k', 'v')",
        "SELECT nats_get_text('b', 'k')",
        "SELECT nats_delete_value('b', 'k')",
        "SELECT nats_put_file('s', 'f', 'x')",
        "SELECT nats_get_file('s', 'f')",
        "SELECT * FROM nats_get_file_list('s')",
    ],
)
def test_jetstream_not_enabled(
    stack: Stack, make_database: MakeDatabase, plain_nats: NatsServer, query: str
) -> None:
    with connect_to(stack, make_database, plain_nats.url) as conn:
        error = assert_sql_error(
            conn,
            query,
            (),
            "PN004",
            f"JetStream is not enabled on the NATS server at {plain_nats.url}",
        )
        assert error.diag.message_hint is not None and "-js" in error.diag.message_hint


def test_nats_down_fails_fast(stack: Stack, make_database: MakeDatabase) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with connect_to(stack, make_database, url) as conn:
        started = time.monotonic()
        assert_sql_error(
            conn,
            "SELECT nats_put_text('b', 'k', 'v')",
            (),
            "08001",
            f"cannot connect to NATS: {url}: connection refused",
        )
        assert time.monotonic() - started < 1.0


def test_connect_timeout_bounds_a_server_that_does_not_answer(
    stack: Stack, make_database: MakeDatabase
) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never says INFO
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"nats://127.0.0.1:{listener.getsockname()[1]}"
        with connect_to(stack, make_database, url) as conn:
            set_server_option(conn, "connect_timeout", "400")
            started = time.monotonic()
            assert_sql_error(
                conn,
                "SELECT nats_publish_text_stream('a.b', 'x')",
                (),
                "08001",
                "no answer within 400 ms (connect_timeout)",
            )
            assert 0.35 < time.monotonic() - started < 1.5


def test_first_connect_fails_then_works(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer
) -> None:
    with connect_to(stack, make_database, private_nats.url) as conn:
        private_nats.stop()
        assert_sql_error(conn, "SELECT nats_put_text('b', 'k', 'v')", (), "08001", "refused")
        private_nats.start()
        assert scalar(conn, "SELECT nats_put_text('b', 'k', 'v')") == 1


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_nats_restart_between_two_calls(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer, how: str
) -> None:
    add_stream(private_nats.url, "EVENTS", ["events.>"])
    with connect_to(stack, make_database, private_nats.url) as conn:
        assert scalar(conn, "SELECT nats_put_text('b', 'k', 'one')") == 1
        conn.execute("SELECT nats_publish_text_stream('events.a', 'one')")
        if how == "kill":
            private_nats.kill()
            private_nats.start()
        else:
            private_nats.restart()
        # Same session, no error: the stale connection is noticed and replaced.
        assert scalar(conn, "SELECT nats_put_text('b', 'k', 'two')") == 2
        assert scalar(conn, "SELECT nats_get_text('b', 'k')") == "two"
        conn.execute("SELECT nats_publish_text_stream('events.a', 'two')")
    assert stream_messages(private_nats.url, "EVENTS") == [
        ("events.a", b"one"),
        ("events.a", b"two"),
    ]


def test_failed_publish_is_never_stored_later(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer
) -> None:
    add_stream(private_nats.url, "EVENTS", ["events.>"])
    with connect_to(stack, make_database, private_nats.url) as conn:
        conn.execute("SELECT nats_publish_text_stream('events.a', 'before')")
        private_nats.stop()
        assert_sql_error(
            conn, "SELECT nats_publish_text_stream('events.a', 'failed')", (), "08001", "refused"
        )
        private_nats.start()
        conn.execute("SELECT nats_publish_text_stream('events.a', 'after')")
        time.sleep(0.2)  # a late delivery of 'failed' would have happened by now
    assert stream_messages(private_nats.url, "EVENTS") == [
        ("events.a", b"before"),
        ("events.a", b"after"),
    ]


def test_frozen_server_times_out_and_the_session_recovers(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer
) -> None:
    add_stream(private_nats.url, "EVENTS", ["events.>"])
    with connect_to(stack, make_database, private_nats.url) as conn:
        set_server_option(conn, "request_timeout", "300")
        conn.execute("SELECT nats_publish_text_stream('events.a', 'before')")
        pid = freeze(private_nats)
        try:
            started = time.monotonic()
            error = assert_sql_error(
                conn,
                "SELECT nats_publish_text_stream('events.a', 'frozen')",
                (),
                "PN001",
                "no answer from NATS within 300 ms; it may or may not have been stored",
            )
            assert "request_timeout" in (error.diag.message_hint or "")
            assert time.monotonic() - started < 1.5
        finally:
            os.kill(pid, signal.SIGKILL)  # a crash: what it had not read yet is gone
        private_nats.start()
        conn.execute("SELECT nats_publish_text_stream('events.a', 'after')")
    assert stream_messages(private_nats.url, "EVENTS") == [
        ("events.a", b"before"),
        ("events.a", b"after"),
    ]


def test_server_drops_the_idle_connection(
    stack: Stack, make_database: MakeDatabase, tmp_path: Path
) -> None:
    # The server PINGs every 100 ms and drops a client that misses 2: a session that is idle
    # between SQL calls answers none.
    server = NatsServer(
        port=free_port(), workdir=tmp_path / "pinging", ping_interval="100ms", ping_max=2
    )
    server.start()
    try:
        add_stream(server.url, "EVENTS", ["events.>"])
        with connect_to(stack, make_database, server.url) as conn:
            conn.execute("SELECT nats_publish_text_stream('events.a', 'one')")
            time.sleep(1.0)
            conn.execute("SELECT nats_publish_text_stream('events.a', 'two')")
            assert scalar(conn, "SELECT nats_put_text('b', 'k', 'v')") == 1
            time.sleep(1.0)
            assert scalar(conn, "SELECT nats_get_text('b', 'k')") == "v"
        assert [payload for _, payload in stream_messages(server.url, "EVENTS")] == [
            b"one",
            b"two",
        ]
    finally:
        server.stop()


def test_ack_timeout(conn: Conn, nats_url: str) -> None:
    subject = unique("silent") + ".x"
    set_server_option(conn, "request_timeout", "300")
    with silent_subscriber(nats_url, subject):
        started = time.monotonic()
        assert_sql_error(
            conn,
            "SELECT nats_publish_text_stream(%s, 'x')",
            (subject,),
            "PN001",
            f'publish to JetStream subject "{subject}": no answer from NATS within 300 ms',
        )
        assert 0.25 < time.monotonic() - started < 1.0


def test_statement_timeout_ends_a_waiting_publish(conn: Conn, nats_url: str) -> None:
    subject = unique("silent") + ".x"
    set_server_option(conn, "request_timeout", "20000")
    with silent_subscriber(nats_url, subject):
        conn.execute("SET statement_timeout = 300")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute("SELECT nats_publish_text_stream(%s, 'x')", (subject,))
        assert time.monotonic() - started < 0.3 + 0.5
        conn.execute("RESET statement_timeout")
    # The session goes on working.
    assert scalar(conn, "SELECT nats_put_text(%s, 'k', 'v')", (unique("kv"),)) == 1


def test_pg_cancel_backend_ends_a_waiting_publish(stack: Stack, db: str, nats_url: str) -> None:
    subject = unique("silent") + ".x"
    errors: list[BaseException] = []
    with admin_connect(stack, db) as conn, silent_subscriber(nats_url, subject):
        set_server_option(conn, "request_timeout", "20000")
        pid = scalar(conn, "SELECT pg_backend_pid()")

        def publish() -> None:
            try:
                conn.execute("SELECT nats_publish_text_stream(%s, 'x')", (subject,))
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=publish)
        worker.start()
        with admin_connect(stack, db) as other:
            active = (
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
                "AND query LIKE '%%nats_publish_text_stream%%'"
            )
            deadline = time.monotonic() + 10
            while scalar(other, active, (pid,)) == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)  # well inside the wait for the ack
            cancelled_at = time.monotonic()
            assert scalar(other, "SELECT pg_cancel_backend(%s)", (pid,)) is True
        worker.join(timeout=5)
        assert not worker.is_alive()
        assert time.monotonic() - cancelled_at < 0.5
        assert len(errors) == 1 and isinstance(errors[0], psycopg.errors.QueryCanceled)
        assert scalar(conn, "SELECT nats_put_text(%s, 'k', 'v')", (unique("kv"),)) == 1


def test_changed_settings_are_used_by_the_next_call(conn: Conn, private_nats: NatsServer) -> None:
    bucket = unique("kv")
    assert scalar(conn, "SELECT nats_put_text(%s, 'k', 'session nats')", (bucket,)) == 1
    conn.execute(f"ALTER SERVER nats_server OPTIONS (SET nats_url '{private_nats.url}')")
    time.sleep(1.1)  # settings are re-read at most once a second (or by pgnats_reload_conf)
    assert scalar(conn, "SELECT nats_get_text(%s, 'k')", (bucket,)) is None
    assert scalar(conn, "SELECT nats_put_text(%s, 'k', 'private nats')", (bucket,)) == 1


def test_server_crash_during_a_waiting_publish(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer
) -> None:
    subject = "silent.x"
    with (
        connect_to(stack, make_database, private_nats.url) as conn,
        silent_subscriber(private_nats.url, subject),
    ):
        set_server_option(conn, "request_timeout", "20000")
        conn.execute("SELECT nats_put_text('b', 'k', 'v')")  # connected
        crash = threading.Timer(0.5, private_nats.kill)
        crash.start()
        started = time.monotonic()
        try:
            assert_sql_error(
                conn,
                "SELECT nats_publish_text_stream(%s, 'x')",
                (subject,),
                "08006",
                "the connection to NATS at "
                f"{private_nats.url} was lost (nats: connection closed); it may or may not",
            )
        finally:
            crash.join()
        assert time.monotonic() - started < 0.5 + 0.5  # not the 20 s request_timeout
        private_nats.start()
        assert scalar(conn, "SELECT nats_get_text('b', 'k')") == "v"


def test_statement_timeout_ends_a_waiting_connect(
    stack: Stack, make_database: MakeDatabase
) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never says INFO
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"nats://127.0.0.1:{listener.getsockname()[1]}"
        with connect_to(stack, make_database, url) as conn:
            set_server_option(conn, "connect_timeout", "20000")
            conn.execute("SET statement_timeout = 300")
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT nats_put_text('b', 'k', 'v')")
            assert time.monotonic() - started < 0.3 + 0.5


def test_next_server_of_a_cluster_list(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer
) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    with connect_to(stack, make_database, f"{dead},{private_nats.url}") as conn:
        assert scalar(conn, "SELECT nats_put_text('b', 'k', 'v')") == 1


def test_credentials_from_the_user_mapping(
    stack: Stack, make_database: MakeDatabase, tmp_path: Path
) -> None:
    server = NatsServer(
        port=free_port(),
        workdir=tmp_path / "auth",
        extra_config="authorization { user: app, password: s3cret }",
    )
    server.start()
    try:
        with connect_to(stack, make_database, server.url) as conn:
            assert_sql_error(
                conn,
                "SELECT nats_put_text('b', 'k', 'v')",
                (),
                "08001",
                "Authorization Violation",
            )
            conn.execute(
                "CREATE USER MAPPING FOR CURRENT_USER SERVER nats_server "
                "OPTIONS (user 'app', password 's3cret')"
            )
            time.sleep(1.1)  # settings are re-read at most once a second
            assert scalar(conn, "SELECT nats_put_text('b', 'k', 'v')") == 1
    finally:
        server.stop()


def test_server_crash_during_a_file_download(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer
) -> None:
    content = os.urandom(16 * 1024 * 1024)
    with connect_to(stack, make_database, private_nats.url) as conn:
        conn.execute("SELECT nats_put_file('s', 'big', %s)", (content,))
        crash = threading.Timer(0.3, private_nats.kill)
        crash.start()
        try:
            # Never a part of the file as if it were all of it (nats-py's get returns what it
            # has when the connection closes; the size and digest check catches that).
            assert_sql_error(
                conn,
                "SELECT nats_get_file('s', 'big')",
                (),
                "08006",
                'get file "big" from object store "s": ',
            )
        finally:
            crash.join()


def test_library_logging_stays_out_of_the_server_log(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer
) -> None:
    with connect_to(stack, make_database, private_nats.url) as conn:
        log_start = stack.postgres.log_path.stat().st_size
        conn.execute("SELECT nats_put_text('b', 'k', 'v')")
        private_nats.kill()
        assert_sql_error(conn, "SELECT nats_put_text('b', 'k', 'v')", (), "08001", "refused")
        private_nats.start()
        conn.execute("SELECT nats_put_text('b', 'k', 'v')")
        # Disconnect with the connection cached: the session ends with the client in place.
    time.sleep(0.3)
    with stack.postgres.log_path.open("rb") as log:
        log.seek(log_start)
        written = log.read().decode(errors="replace")
    for noise in ("Task exception", "Exception in callback", "nats: ", "asyncio"):
        assert noise not in written.replace("pgnats: ", ""), written
