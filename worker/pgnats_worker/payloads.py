"""Sending many payloads as one bytea[] parameter, fast.

psycopg adapts a list of bytes element by element in Python, which cost more than the
callbacks themselves in the benchmark; the binary array format is simple enough to write
in one pass: a header, then each element's length and bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from psycopg import pq
from psycopg.adapt import AdaptersMap, Dumper

BYTEA_OID = 17
BYTEA_ARRAY_OID = 1001

# ndim, has-nulls flag, element type, then (size, lower bound) of the one dimension.
_HEADER = struct.Struct("!iiIii")
_LENGTH = struct.Struct("!i")


class PayloadArray:
    """Payloads to pass as one ``bytea[]`` parameter."""

    __slots__ = ("payloads",)

    def __init__(self, payloads: Sequence[bytes]) -> None:
        self.payloads = payloads


class PayloadArrayDumper(Dumper):
    format = pq.Format.BINARY
    oid = BYTEA_ARRAY_OID

    def dump(self, obj: PayloadArray) -> bytes:
        length = _LENGTH.pack
        parts = [_HEADER.pack(1, 0, BYTEA_OID, len(obj.payloads), 1)]
        for payload in obj.payloads:
            parts.append(length(len(payload)))
            parts.append(payload)
        return b"".join(parts)


def register_payload_arrays(adapters: AdaptersMap) -> None:
    adapters.register_dumper(PayloadArray, PayloadArrayDumper)
