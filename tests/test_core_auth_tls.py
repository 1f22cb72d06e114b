"""Authentication (user mapping options) and TLS (server options) of the core connection,
against NATS servers configured for each."""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nkeys
import psycopg
import pytest
import trustme

from devstack.nats import NatsServer
from devstack.ports import free_port
from devstack.stack import Stack
from tests.conftest import MakeDatabase, admin_connect
from tests.nats_helpers import NatsSide, echo
from tests.nats_jwt import new_keypair, operator_setup
from tests.queries import Conn


@pytest.fixture
def shared_dir(stack: Stack) -> Iterator[Path]:
    """A folder the postgres OS user can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(dir=stack.runtime_dir, prefix="files-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write(path: Path, content: str | bytes) -> str:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    path.chmod(0o644)
    return str(path)


MakeServer = Callable[[str], NatsServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[MakeServer]:
    """Starts NATS servers with the given extra config; stops them after the test."""
    started: list[NatsServer] = []

    def make(extra_config: str) -> NatsServer:
        server = NatsServer(
            port=free_port(),
            workdir=tmp_path / f"nats{len(started)}",
            jetstream=False,
            extra_config=extra_config,
        )
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


def session_for(
    stack: Stack, make_database: MakeDatabase, url: str, server_options: str = ""
) -> psycopg.Connection[tuple[object, ...]]:
    conn = admin_connect(stack, make_database(nats_url=url))
    if server_options:
        conn.execute(f"ALTER SERVER nats_server OPTIONS (ADD {server_options})")
    return conn


def map_user(conn: Conn, options: str) -> None:
    conn.execute(f"CREATE USER MAPPING FOR CURRENT_USER SERVER nats_server OPTIONS ({options})")


# -- user / password, token, nkey ---------------------------------------------------------


def test_user_and_password(
    stack: Stack, make_database: MakeDatabase, make_server: MakeServer, nats_side: NatsSide
) -> None:
    server = make_server('authorization { user: "app", password: "s3cret" }')
    received = nats_side.subscribe(server.url, "auth.>", user="app", password="s3cret")
    with session_for(stack, make_database, server.url) as conn:
        with pytest.raises(
            psycopg.Error, match=r"authentication failed \(Authorization Violation"
        ) as excinfo:
            conn.execute("SELECT nats_publish_text('auth.x', 'no mapping')")
        assert "no credentials were sent" in str(excinfo.value.diag.message_hint)
        map_user(conn, "user 'app', password 'wrong'")
        with pytest.raises(psycopg.Error, match="authentication failed") as excinfo:
            conn.execute("SELECT nats_publish_text('auth.x', 'wrong password')")
        assert excinfo.value.sqlstate == "28000"
        assert "check the user mapping" in str(excinfo.value.diag.message_hint)
        conn.execute("ALTER USER MAPPING FOR CURRENT_USER SERVER nats_server "
                     "OPTIONS (SET password 's3cret')")  # fmt: skip
        conn.execute("SELECT pgnats_reload_conf()")
        conn.execute("SELECT nats_publish_text('auth.x', 'right password')")
        assert received.next().data == b"right password"
        assert conn.execute("SELECT (nats_get_server_info()).auth_required").fetchone() == (True,)
    received.assert_empty(0.1)


def test_token(
    stack: Stack, make_database: MakeDatabase, make_server: MakeServer, nats_side: NatsSide
) -> None:
    server = make_server('authorization { token: "t0ken" }')
    received = nats_side.subscribe(server.url, "auth.>", token="t0ken")
    with session_for(stack, make_database, server.url) as conn:
        map_user(conn, "token 't0ken'")
        conn.execute("SELECT nats_publish_text('auth.token', 'x')")
        assert received.next().data == b"x"


def new_user_seed() -> tuple[bytes, str]:
    seed, keypair = new_keypair(nkeys.PREFIX_BYTE_USER)
    return seed.encode(), keypair.public_key.decode()


def test_nkey_seed(
    stack: Stack,
    make_database: MakeDatabase,
    make_server: MakeServer,
    nats_side: NatsSide,
    shared_dir: Path,
) -> None:
    seed, public_key = new_user_seed()
    other_seed, _ = new_user_seed()
    server = make_server(f'authorization {{ users: [ {{ nkey: "{public_key}" }} ] }}')
    seed_path = write(shared_dir / "user.nk", seed + b"\n")
    received = nats_side.subscribe(server.url, "auth.>", nkeys_seed_str=seed.decode())
    with session_for(stack, make_database, server.url) as conn:
        map_user(conn, f"nkey_seed_path '{write(shared_dir / 'other.nk', other_seed)}'")
        with pytest.raises(psycopg.Error, match="authentication failed") as excinfo:
            conn.execute("SELECT nats_publish_text('auth.nkey', 'wrong key')")
        assert excinfo.value.sqlstate == "28000"
        conn.execute(
            "ALTER USER MAPPING FOR CURRENT_USER SERVER nats_server "
            f"OPTIONS (SET nkey_seed_path '{seed_path}')"
        )
        conn.execute("SELECT pgnats_reload_conf()")
        conn.execute("SELECT nats_publish_text('auth.nkey', 'signed')")
        assert received.next().data == b"signed"
        assert conn.execute("SELECT (nats_get_server_info()).nonce").fetchone() != (None,)


def test_creds_file(
    stack: Stack,
    make_database: MakeDatabase,
    make_server: MakeServer,
    nats_side: NatsSide,
    shared_dir: Path,
) -> None:
    setup = operator_setup(str(shared_dir / "operator.jwt"))
    server = make_server(setup.server_config)
    creds_path = write(shared_dir / "user.creds", setup.creds)
    received = nats_side.subscribe(server.url, "creds.>", user_credentials=creds_path)
    with session_for(stack, make_database, server.url) as conn:
        with pytest.raises(psycopg.Error, match="authentication failed"):
            conn.execute("SELECT nats_publish_text('creds.x', 'no credentials')")
        map_user(conn, f"creds_path '{creds_path}'")
        conn.execute("SELECT pgnats_reload_conf()")
        conn.execute("SELECT nats_publish_text('creds.x', 'with a JWT')")
        assert received.next().data == b"with a JWT"


def test_file_that_is_not_a_creds_file(
    stack: Stack, make_database: MakeDatabase, make_server: MakeServer, shared_dir: Path
) -> None:
    server = make_server(operator_setup(str(shared_dir / "operator.jwt")).server_config)
    path = write(shared_dir / "bad.creds", "just some text\n")
    with session_for(stack, make_database, server.url) as conn:
        map_user(conn, f"creds_path '{path}'")
        with pytest.raises(psycopg.OperationalError, match="not a NATS credentials file"):
            conn.execute("SELECT nats_publish_text('a.b', 'x')")


def test_nkey_without_pynacl_says_what_to_install(
    stack: Stack, make_database: MakeDatabase, make_server: MakeServer, shared_dir: Path
) -> None:
    seed, public_key = new_user_seed()
    server = make_server(f'authorization {{ users: [ {{ nkey: "{public_key}" }} ] }}')
    with session_for(stack, make_database, server.url) as conn:
        map_user(conn, f"nkey_seed_path '{write(shared_dir / 'user.nk', seed)}'")
        # This backend's Python now behaves as if PyNaCl were not installed.
        conn.execute(
            "DO LANGUAGE plpython3u $$\n"
            "import sys\n"
            "sys.modules.pop('nkeys', None)\n"
            "sys.modules['nacl'] = None\n"
            "$$"
        )
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="needs PyNaCl") as excinfo:
            conn.execute("SELECT nats_publish_text('a.b', 'x')")
        assert "python3-nacl" in (excinfo.value.diag.message_hint or "")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, 'cannot read the file of option "nkey_seed_path"'),
        ("not a seed", 'option "nkey_seed_path" does not hold a valid nkey seed'),
    ],
)
def test_bad_nkey_seed_file(
    stack: Stack,
    make_database: MakeDatabase,
    make_server: MakeServer,
    shared_dir: Path,
    content: str | None,
    message: str,
) -> None:
    _, public_key = new_user_seed()
    server = make_server(f'authorization {{ users: [ {{ nkey: "{public_key}" }} ] }}')
    path = shared_dir / "seed.nk"
    if content is not None:
        write(path, content)
    with session_for(stack, make_database, server.url) as conn:
        map_user(conn, f"nkey_seed_path '{path}'")
        with pytest.raises(psycopg.OperationalError, match=message):
            conn.execute("SELECT nats_publish_text('a.b', 'x')")


# -- TLS ------------------------------------------------------------------------------------


class Certificates:
    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        self.folder = folder
        self.ca_path = write(folder / "ca.pem", self.ca.cert_pem.bytes())
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = write(folder / "server.pem", server.cert_chain_pems[0].bytes())
        self.server_key = write(folder / "server.key", server.private_key_pem.bytes())
        client = self.ca.issue_cert("pgnats-client")
        self.client_cert = write(folder / "client.pem", client.cert_chain_pems[0].bytes())
        self.client_key = write(folder / "client.key", client.private_key_pem.bytes())
        self.other_ca_path = write(folder / "other-ca.pem", trustme.CA().cert_pem.bytes())

    def server_config(self, verify: bool = False) -> str:
        lines = [
            f'cert_file: "{self.server_cert}"',
            f'key_file: "{self.server_key}"',
            f'ca_file: "{self.ca_path}"',
            f"verify: {'true' if verify else 'false'}",
        ]
        return "tls {\n" + "\n".join(lines) + "\n}"

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_path)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


@pytest.fixture
def certificates(shared_dir: Path) -> Certificates:
    return Certificates(shared_dir)


def tls_url(server: NatsServer) -> str:
    return f"tls://127.0.0.1:{server.port}"


def test_tls_with_a_ca(
    stack: Stack,
    make_database: MakeDatabase,
    make_server: MakeServer,
    nats_side: NatsSide,
    certificates: Certificates,
) -> None:
    server = make_server(certificates.server_config())
    received = nats_side.subscribe(server.url, "tls.>", tls=certificates.client_context())
    options = f"tls_ca_path '{certificates.ca_path}'"
    with session_for(stack, make_database, tls_url(server), options) as conn:
        conn.execute("SELECT nats_publish_text('tls.x', 'encrypted')")
        assert received.next().data == b"encrypted"
        assert conn.execute("SELECT (nats_get_server_info()).tls_required").fetchone() == (True,)
        # Large requests and replies span many TLS records.
        nats_side.respond(server.url, "tls.echo", echo, tls=certificates.client_context())
        row = conn.execute(
            "SELECT md5(nats_request_binary('tls.echo', b)) = md5(b) "
            "FROM (SELECT decode(repeat('0123456789abcdef', 50000), 'hex') AS b) s, "
            "generate_series(1, 5)"
        ).fetchall()
        assert row == [(True,)] * 5


def test_tls_with_an_unknown_ca_is_refused(
    stack: Stack,
    make_database: MakeDatabase,
    make_server: MakeServer,
    certificates: Certificates,
) -> None:
    server = make_server(certificates.server_config())
    options = f"tls_ca_path '{certificates.other_ca_path}'"
    with (
        session_for(stack, make_database, tls_url(server), options) as conn,
        pytest.raises(psycopg.OperationalError, match="the server's certificate was not accepted"),
    ):
        conn.execute("SELECT nats_publish_text('tls.x', 'x')")


def test_server_requiring_tls_is_verified_against_system_cas(
    stack: Stack,
    make_database: MakeDatabase,
    make_server: MakeServer,
    certificates: Certificates,
) -> None:
    """A nats:// URL to a TLS server still gets TLS, verified: our test CA is not trusted."""
    server = make_server(certificates.server_config())
    with (
        session_for(stack, make_database, server.url) as conn,
        pytest.raises(psycopg.OperationalError, match="the server's certificate was not accepted"),
    ):
        conn.execute("SELECT nats_publish_text('tls.x', 'x')")


def test_mutual_tls(
    stack: Stack,
    make_database: MakeDatabase,
    make_server: MakeServer,
    nats_side: NatsSide,
    certificates: Certificates,
) -> None:
    server = make_server(certificates.server_config(verify=True))
    received = nats_side.subscribe(server.url, "mtls.>", tls=certificates.client_context())
    options = f"tls_ca_path '{certificates.ca_path}'"
    with session_for(stack, make_database, tls_url(server), options) as conn:
        with pytest.raises(psycopg.OperationalError, match="closed the connection") as excinfo:
            conn.execute("SELECT nats_publish_text('mtls.x', 'no client certificate')")
        assert "client certificate" in (excinfo.value.diag.message_hint or "")
        conn.execute(
            "ALTER SERVER nats_server OPTIONS ("
            f"ADD tls_cert_path '{certificates.client_cert}', "
            f"ADD tls_key_path '{certificates.client_key}')"
        )
        conn.execute("SELECT pgnats_reload_conf()")
        conn.execute("SELECT nats_publish_text('mtls.x', 'with client certificate')")
        assert received.next().data == b"with client certificate"
        assert conn.execute("SELECT (nats_get_server_info()).tls_verify").fetchone() == (True,)


def test_tls_asked_of_a_server_without_it(
    stack: Stack, make_database: MakeDatabase, private_nats: NatsServer
) -> None:
    with (
        session_for(stack, make_database, tls_url(private_nats)) as conn,
        pytest.raises(psycopg.OperationalError, match="the server does not offer it"),
    ):
        conn.execute("SELECT nats_publish_text('tls.x', 'x')")


def test_missing_tls_file_is_named(
    stack: Stack,
    make_database: MakeDatabase,
    make_server: MakeServer,
    certificates: Certificates,
) -> None:
    server = make_server(certificates.server_config())
    options = "tls_ca_path '/nonexistent/ca.pem'"
    with (
        session_for(stack, make_database, tls_url(server), options) as conn,
        pytest.raises(psycopg.OperationalError, match="cannot load the TLS files") as excinfo,
    ):
        conn.execute("SELECT nats_publish_text('tls.x', 'x')")
    assert "tls_ca_path" in (excinfo.value.diag.message_hint or "")


def test_permission_violation_is_raised_by_the_next_call(
    stack: Stack, make_database: MakeDatabase, make_server: MakeServer, nats_side: NatsSide
) -> None:
    """A publish does not wait for the server, so a refusal can only surface on the next
    call of the session, as an error that says so; the session then goes on."""
    server = make_server(
        "authorization { users: [ "
        '{ user: "app", password: "pw", permissions: { publish: "allowed.>" } }, '
        '{ user: "sub", password: "pw" } ] }'
    )
    received = nats_side.subscribe(server.url, ">", user="sub", password="pw")
    with session_for(stack, make_database, server.url) as conn:
        map_user(conn, "user 'app', password 'pw'")
        conn.execute("SELECT nats_publish_text('denied.x', 'refused by the server')")
        with pytest.raises(
            psycopg.Error, match=r'Permissions Violation for Publish to "denied\.x"'
        ):
            conn.execute("SELECT nats_get_server_info()")
        conn.execute("SELECT nats_publish_text('allowed.x', 'fine')")
        message = received.next()
        assert (message.subject, message.data) == ("allowed.x", b"fine")
        received.assert_empty(0.2)


def test_each_role_uses_its_own_user_mapping(
    stack: Stack, make_database: MakeDatabase, make_server: MakeServer, nats_side: NatsSide
) -> None:
    server = make_server(
        'authorization { users: [ { user: "alice", password: "pa" }, '
        '{ user: "bob", password: "pb" } ] }'
    )
    received = nats_side.subscribe(server.url, "roles.>", user="alice", password="pa")
    db = make_database(nats_url=server.url)
    suffix = os.getpid()
    roles = {"alice": f"pgnats_alice_{suffix}", "bob": f"pgnats_bob_{suffix}"}
    with admin_connect(stack, db) as admin:
        for name, role in roles.items():
            admin.execute(f"CREATE ROLE {role} LOGIN")
            # A role reads its own mapping's options only with USAGE on the server.
            admin.execute(f"GRANT USAGE ON FOREIGN SERVER nats_server TO {role}")
            password = "pa" if name == "alice" else "wrong"
            admin.execute(
                f"CREATE USER MAPPING FOR {role} SERVER nats_server "
                f"OPTIONS (user '{name}', password '{password}')"
            )
        try:
            with psycopg.connect(stack.postgres.dsn(db, user=roles["alice"])) as alice:
                alice.execute("SELECT nats_publish_text('roles.alice', 'from alice')")
                assert received.next().data == b"from alice"
            with (
                psycopg.connect(stack.postgres.dsn(db, user=roles["bob"])) as bob,
                pytest.raises(psycopg.Error, match="authentication failed") as excinfo,
            ):
                bob.execute("SELECT nats_publish_text('roles.bob', 'from bob')")
            assert excinfo.value.sqlstate == "28000"
            # Without USAGE on the server a role cannot read its own mapping: it sends no
            # credentials, and the hint says why.
            admin.execute(f"REVOKE USAGE ON FOREIGN SERVER nats_server FROM {roles['alice']}")
            with (
                psycopg.connect(stack.postgres.dsn(db, user=roles["alice"])) as alice,
                pytest.raises(psycopg.Error, match="authentication failed") as excinfo,
            ):
                alice.execute("SELECT nats_publish_text('roles.alice', 'no usage')")
            assert "GRANT USAGE ON FOREIGN SERVER" in str(excinfo.value.diag.message_hint)
        finally:
            for role in roles.values():
                admin.execute(f"DROP OWNED BY {role}")
                admin.execute(f"DROP ROLE {role}")


# -- the current role decides the credentials ---------------------------------------------


@pytest.fixture
def token_db(
    stack: Stack, make_database: MakeDatabase, make_server: MakeServer
) -> Iterator[tuple[str, NatsServer, str]]:
    """A database whose NATS wants a token that only the superuser's mapping has, a role
    with no mapping, and a SECURITY DEFINER function publishing as the superuser."""
    server = make_server('authorization { token: "t0ken" }')
    db = make_database(nats_url=server.url)
    role = f"pgnats_carol_{os.getpid()}"
    with admin_connect(stack, db) as admin:
        map_user(admin, "token 't0ken'")
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(
            "CREATE FUNCTION publish_as_owner(message text) RETURNS void LANGUAGE sql "
            "SECURITY DEFINER AS $$ SELECT nats_publish_text('auth.owner', message) $$"
        )
        admin.execute(f"GRANT EXECUTE ON FUNCTION publish_as_owner(text) TO {role}")
        try:
            yield db, server, role
        finally:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_set_role_uses_the_new_roles_credentials(
    stack: Stack, token_db: tuple[str, NatsServer, str], nats_side: NatsSide
) -> None:
    db, server, role = token_db
    received = nats_side.subscribe(server.url, "auth.>", token="t0ken")
    with admin_connect(stack, db) as conn:
        conn.execute("SELECT nats_publish_text('auth.admin', 'as admin')")
        assert received.next().data == b"as admin"
        conn.execute(f"SET ROLE {role}")
        with pytest.raises(psycopg.Error, match="authentication failed") as excinfo:
            conn.execute("SELECT nats_publish_text('auth.carol', 'not with the admin token')")
        assert excinfo.value.sqlstate == "28000"
        conn.execute("RESET ROLE")
        conn.execute("SELECT nats_publish_text('auth.admin', 'admin again')")
        assert received.next().data == b"admin again"
    received.assert_empty(0.2)


def test_security_definer_credentials_stay_with_the_definer(
    stack: Stack, token_db: tuple[str, NatsServer, str], nats_side: NatsSide
) -> None:
    db, server, role = token_db
    received = nats_side.subscribe(server.url, "auth.>", token="t0ken")
    with psycopg.connect(stack.postgres.dsn(db, user=role), autocommit=True) as carol:
        carol.execute("SELECT publish_as_owner('through the definer')")
        assert received.next().data == b"through the definer"
        with pytest.raises(psycopg.Error, match="authentication failed"):
            carol.execute("SELECT nats_publish_text('auth.carol', 'directly')")
        # The internal function checks the role it is told against the real one.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="current role is"):
            carol.execute(
                "SELECT pgnats._nats_publish_text('auth.forged', 'x', NULL, NULL, 'postgres')"
            )
        carol.execute("SELECT publish_as_owner('still fine')")
        assert received.next().data == b"still fine"
    received.assert_empty(0.2)
