"""Connecting to NATS: the endpoints of the settings in order, and for each one the name
lookup, TCP, the server's INFO, TLS, CONNECT with credentials, and the first PONG, all
within ``connect_timeout`` and interruptible by a cancel request.

Plain Python: no ``plpy`` here, the interrupt check is passed in.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import ssl
import threading
import time
from typing import Any

from pgnats import __version__
from pgnats.backend import nats_protocol as proto
from pgnats.backend.nats_auth import auth_options
from pgnats.backend.nats_connection import (
    READ_EVENTS,
    READ_SIZE,
    WOULD_BLOCK,
    WRITE_EVENTS,
    InterruptCheck,
    Lost,
    NatsConnection,
    ServerError,
    as_ms,
    wait_for,
)
from pgnats.config import ConnectSettings, Endpoint
from pgnats.errors import ConnectFailed, NatsTimeout

SQLSTATE_AUTH_FAILED = "28000"  # invalid_authorization_specification

# Nagle's algorithm off: each frame goes on the wire when its send returns, instead of
# waiting in the kernel for the server to acknowledge earlier ones (up to its delayed-ACK
# timeout, 40 ms on Linux, when the server expects to answer). Every NATS client does the
# same. bench/publish.py turns it off in its own session to measure what it costs.
TCP_NODELAY = True


def open_connection(
    settings: ConnectSettings,
    *,
    name: str,
    check_interrupts: InterruptCheck,
    check_interval: float,
) -> NatsConnection:
    """Connect to the first endpoint of ``settings`` that works, each within
    ``connect_timeout``; raise :class:`ConnectFailed` naming every failure."""
    failures: list[tuple[Endpoint, ConnectFailed]] = []
    for endpoint in settings.endpoints:
        opener = _Opener(settings, endpoint, name, check_interrupts, check_interval)
        try:
            return opener.open()
        except ConnectFailed as exc:
            failures.append((endpoint, exc))
    reasons = "; ".join(f"{where.url}: {error.message}" for where, error in failures)
    if len(failures) == 1:
        message = f"could not connect to NATS at {reasons}"
    else:
        message = f"could not connect to any NATS server ({reasons})"
    auth_only = all(error.sqlstate == SQLSTATE_AUTH_FAILED for _, error in failures)
    raise ConnectFailed(
        message,
        hint=failures[-1][1].hint,
        sqlstate=SQLSTATE_AUTH_FAILED if auth_only else None,
    )


def _auth_hint(settings: ConnectSettings) -> str:
    if settings.has_credentials:
        return (
            "check the user mapping's options for this role "
            "(user/password, token, creds_path or nkey_seed_path)"
        )
    # PostgreSQL hides a mapping's options from roles that may not use them.
    return (
        "no credentials were sent: this role has no user mapping whose options it can read. "
        "Create one FOR CURRENT_USER and GRANT USAGE ON FOREIGN SERVER to the role; the "
        "options of a mapping FOR PUBLIC are visible only to members of the server's owner"
    )


class _Opener:
    """Connecting to one endpoint: TCP, the server's INFO, TLS, CONNECT and the first PONG,
    all before one deadline."""

    def __init__(
        self,
        settings: ConnectSettings,
        endpoint: Endpoint,
        name: str,
        check_interrupts: InterruptCheck,
        check_interval: float,
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.name = name
        self.check_interrupts = check_interrupts
        self.check_interval = check_interval
        self.timeout = settings.connect_timeout_ms / 1000
        self.deadline = time.monotonic() + self.timeout

    def open(self) -> NatsConnection:
        sock = self._tcp_connect()
        try:
            parser = proto.Parser()
            info = self._read_info(sock, parser)
            sock, tls = self._maybe_start_tls(sock, info)
            options: dict[str, Any] = {
                "verbose": False,
                "pedantic": False,
                "tls_required": tls,
                "name": self.name,
                "lang": "python-pgnats",
                "version": __version__,
                "protocol": 1,
                # No responders are reported in a header block: both or neither (servers
                # older than 2.2, or configured without headers, refuse the pair).
                "headers": bool(info.get("headers")),
                "no_responders": bool(info.get("headers")),
            }
            options.update(auth_options(self.settings, info.get("nonce")))
            connection = NatsConnection(
                sock,
                self.endpoint,
                self.settings,
                info,
                parser,
                self.check_interrupts,
                self.check_interval,
            )
            self._handshake(connection, options, tls)
            return connection
        except BaseException:
            sock.close()
            raise

    def _timed_out(self, step: str) -> ConnectFailed:
        return ConnectFailed(f"timed out {step} (connect_timeout is {as_ms(self.timeout)} ms)")

    def _resolve(self) -> list[Any]:
        """The server's addresses. A DNS lookup cannot be given a timeout, so it runs in a
        thread of its own while we wait, within the connect timeout and interruptibly;
        a lookup that took too long is left to finish by itself."""
        host, port = self.endpoint.host, self.endpoint.port
        outcome: list[Any] = []
        done = threading.Event()

        def lookup() -> None:
            try:
                outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except OSError as exc:
                outcome.append(exc)
            finally:
                done.set()

        if _is_ip_address(host):
            lookup()  # no DNS involved
        else:
            threading.Thread(target=lookup, name="pgnats-resolve", daemon=True).start()
        while not done.wait(max(min(self.deadline - time.monotonic(), self.check_interval), 0)):
            if time.monotonic() >= self.deadline:
                raise self._timed_out(f"resolving {host!r}")
            self.check_interrupts()
        if isinstance(outcome[0], OSError):
            raise ConnectFailed(f"cannot resolve host {host!r}: {outcome[0]}")
        return list(outcome[0])

    def _tcp_connect(self) -> socket.socket:
        addresses = self._resolve()
        last_error = "no address"
        for family, kind, protocol, _, address in addresses:
            sock = socket.socket(family, kind, protocol)
            try:
                sock.setblocking(False)
                result = sock.connect_ex(address)
                if result == errno.EINPROGRESS:
                    poller = select.poll()
                    poller.register(sock.fileno(), WRITE_EVENTS)
                    if not self._wait(poller):
                        raise self._timed_out("connecting")
                    result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if result == 0:
                    if TCP_NODELAY:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return sock
                last_error = os.strerror(result)
            except BaseException:
                sock.close()
                raise
            sock.close()
        raise ConnectFailed(last_error)

    def _wait(self, poller: select.poll) -> bool:
        return wait_for(poller, self.deadline, self.check_interrupts, self.check_interval)

    def _read_info(self, sock: socket.socket, parser: proto.Parser) -> dict[str, Any]:
        poller = select.poll()
        poller.register(sock.fileno(), READ_EVENTS)
        while True:
            if not self._wait(poller):
                raise self._timed_out("waiting for the server's INFO")
            try:
                data = sock.recv(READ_SIZE)
            except WOULD_BLOCK:
                continue
            except OSError as exc:
                raise ConnectFailed(exc.strerror or str(exc)) from None
            if not data:
                raise ConnectFailed("the server closed the connection before its INFO")
            try:
                events = parser.feed(data)
            except proto.ProtocolError as exc:
                raise ConnectFailed(f"not a NATS server? ({exc})") from None
            if events:
                first = events[0]
                if not isinstance(first, proto.Info):
                    raise ConnectFailed("not a NATS server? (its first message was not INFO)")
                return dict(first.fields)

    def _maybe_start_tls(
        self, sock: socket.socket, info: dict[str, Any]
    ) -> tuple[socket.socket, bool]:
        server_requires = bool(info.get("tls_required"))
        server_offers = server_requires or bool(info.get("tls_available"))
        if not (server_requires or self.settings.tls_required):
            return sock, False
        if not server_offers:
            raise ConnectFailed(
                "TLS was asked for (tls:// URL or TLS options) but the server does not offer it"
            )
        try:
            context = self.settings.ssl_context() or ssl.create_default_context()
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(
                f"cannot load the TLS files: {exc}",
                hint="check tls_ca_path, tls_cert_path and tls_key_path; the files must be "
                "readable by the operating-system user PostgreSQL runs as",
            ) from None
        tls_sock = context.wrap_socket(
            sock, server_hostname=self.endpoint.host, do_handshake_on_connect=False
        )
        readable = select.poll()
        readable.register(tls_sock.fileno(), READ_EVENTS)
        writable = select.poll()
        writable.register(tls_sock.fileno(), WRITE_EVENTS)
        while True:
            try:
                tls_sock.do_handshake()
                return tls_sock, True
            except ssl.SSLWantReadError:
                ready = self._wait(readable)
            except ssl.SSLWantWriteError:
                ready = self._wait(writable)
            except ssl.SSLCertVerificationError as exc:
                raise ConnectFailed(
                    f"TLS handshake failed: the server's certificate was not accepted "
                    f"({exc.verify_message})",
                    hint="tls_ca_path must name the CA that signed the server's certificate"
                    if self.settings.tls_ca_path
                    else "the server uses TLS: set tls_ca_path to the CA that signed its "
                    "certificate (without it, only the system's CAs are trusted)",
                ) from None
            except ssl.SSLError as exc:
                raise ConnectFailed(f"TLS handshake failed: {exc.reason or exc}") from None
            except OSError as exc:
                raise ConnectFailed(f"TLS handshake failed: {exc.strerror or exc}") from None
            if not ready:
                raise self._timed_out("in the TLS handshake")

    def _handshake(self, connection: NatsConnection, options: dict[str, Any], tls: bool) -> None:
        """CONNECT, then PING: the PONG (or a -ERR) says whether the server accepted us."""
        try:
            connection.ping(self.deadline - time.monotonic(), before=proto.connect_frame(options))
        except ServerError as exc:
            message = exc.server_message
            if _is_auth_error(message):
                raise ConnectFailed(
                    f"authentication failed ({message})",
                    hint=_auth_hint(self.settings),
                    sqlstate=SQLSTATE_AUTH_FAILED,
                ) from None
            raise ConnectFailed(f"the server refused the connection ({message})") from None
        except Lost as exc:
            hint = None
            if tls and not self.settings.tls_cert_path:
                hint = "the server may require a client certificate (tls_cert_path, tls_key_path)"
            raise ConnectFailed(
                f"the server closed the connection during the handshake ({exc.reason})", hint=hint
            ) from None
        except NatsTimeout:
            raise self._timed_out("waiting for the server to accept CONNECT") from None


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_auth_error(message: str) -> bool:
    lowered = message.lower()
    return "authorization" in lowered or "authentication" in lowered
