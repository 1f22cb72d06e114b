"""A NATS operator, account and user minted here (what `nsc` does), so that a test server
can run in operator mode and a test can log in with a ``.creds`` file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nkeys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def new_keypair(prefix: int) -> tuple[str, Any]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return seed.decode(), nkeys.from_seed(bytearray(seed))


def _jwt(issuer: Any, subject: str, name: str, claims: dict[str, Any]) -> str:
    body: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": claims,
    }
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode()
    header = {"typ": "JWT", "alg": "ed25519-nkey"}
    signed = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(body).encode())
    return signed + "." + _b64(issuer.sign(signed.encode()))


UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


@dataclass
class OperatorSetup:
    server_config: str  # lines for nats.conf
    creds: str  # the user's .creds file


def operator_setup(operator_jwt_path: str) -> OperatorSetup:
    """Operator JWT (written to ``operator_jwt_path``), one account, one user."""
    _, operator = new_keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _, account = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, user = new_keypair(nkeys.PREFIX_BYTE_USER)
    operator_pub = operator.public_key.decode()
    account_pub = account.public_key.decode()
    with open(operator_jwt_path, "w") as handle:
        handle.write(_jwt(operator, operator_pub, "op", {"type": "operator", "version": 2}))
    limits = UNLIMITED | {"imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}
    account_jwt = _jwt(
        operator, account_pub, "acc", {"limits": limits, "type": "account", "version": 2}
    )
    user_jwt = _jwt(
        account,
        user.public_key.decode(),
        "user",
        {"pub": {}, "sub": {}, **UNLIMITED, "type": "user", "version": 2},
    )
    config = (
        f'operator: "{operator_jwt_path}"\n'
        "resolver: MEMORY\n"
        f'resolver_preload: {{ {account_pub}: "{account_jwt}" }}'
    )
    creds = (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
    )
    return OperatorSetup(config, creds)
