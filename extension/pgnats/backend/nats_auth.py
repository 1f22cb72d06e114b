"""The authentication fields of a NATS CONNECT, from the user mapping's options.

user/password and token need nothing. An nkey seed or a creds file (JWT + nkey seed) needs
the server's nonce signed with ed25519: that is done by the ``nkeys`` package (installed
with the extension), which needs PyNaCl, a compiled package that ``make install`` cannot
put in the extension's pure-Python folder. It comes from the operating system instead
(Debian/Ubuntu: ``python3-nacl``); without it those two options fail with an error that
says so, and the other ways of authenticating keep working.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from pgnats.config import ConnectSettings
from pgnats.errors import ConnectFailed, PgnatsError

SQLSTATE_FEATURE_NOT_SUPPORTED = "0A000"

_CREDS_JWT = re.compile(r"-+BEGIN NATS USER JWT-+\s*\n\s*(\S+)")
_CREDS_SEED = re.compile(r"-+BEGIN USER NKEY SEED-+\s*\n\s*(\S+)")


def auth_options(settings: ConnectSettings, nonce: str | None) -> dict[str, str]:
    if settings.user is not None:
        return {"user": settings.user, "pass": settings.password or ""}
    if settings.token is not None:
        return {"auth_token": settings.token}
    if settings.nkey_seed_path is not None:
        seed = _read_file("nkey_seed_path", settings.nkey_seed_path).strip()
        keypair = _keypair("nkey_seed_path", seed)
        options = {"nkey": keypair.public_key.decode()}
        return options | _signature(keypair, nonce)
    if settings.creds_path is not None:
        jwt, seed = parse_creds(_read_file("creds_path", settings.creds_path))
        return {"jwt": jwt} | _signature(_keypair("creds_path", seed), nonce)
    return {}


def parse_creds(text: str) -> tuple[str, str]:
    """The user JWT and the nkey seed of a ``.creds`` file."""
    jwt = _CREDS_JWT.search(text)
    seed = _CREDS_SEED.search(text)
    if jwt is None or seed is None:
        raise ConnectFailed(
            'the file of option "creds_path" is not a NATS credentials file',
            hint="it needs a NATS USER JWT block and a USER NKEY SEED block (nsc generate creds)",
        )
    return jwt.group(1), seed.group(1)


def _read_file(option: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConnectFailed(
            f'cannot read the file of option "{option}" ({path}): {reason}',
            hint="the file must be readable by the operating-system user PostgreSQL runs as",
        ) from None


def _nkeys_module(option: str) -> Any:
    try:
        import nkeys
    except ImportError as exc:
        raise PgnatsError(
            f'option "{option}" needs PyNaCl in the Python that PostgreSQL runs ({exc})',
            hint="install it from the operating system: apt-get install python3-nacl",
            sqlstate=SQLSTATE_FEATURE_NOT_SUPPORTED,
        ) from None
    return nkeys


def _keypair(option: str, seed: str) -> Any:
    nkeys = _nkeys_module(option)
    try:
        return nkeys.from_seed(bytearray(seed.encode()))
    except Exception as exc:
        raise ConnectFailed(
            f'the file of option "{option}" does not hold a valid nkey seed ({exc!r})'
        ) from None


def _signature(keypair: Any, nonce: str | None) -> dict[str, str]:
    if not nonce:
        return {}
    signed = keypair.sign(nonce.encode())
    return {"sig": base64.urlsafe_b64encode(signed).decode().rstrip("=")}
