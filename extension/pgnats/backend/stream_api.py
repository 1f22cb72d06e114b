"""nats_publish_{binary,text,json,jsonb}_stream: publish to JetStream and wait for the ack."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator
from typing import Any

import nats.js.errors

from pgnats.backend.jetstream_client import Connection, jetstream_session
from pgnats.backend.payloads import Headers, PayloadKind, encode_payload, parse_headers
from pgnats.backend.sql_errors import sql_function
from pgnats.errors import NoStream, PgnatsError
from pgnats.subjects import validate_publish_subject


class _PairsView(ItemsView[str, str]):
    def __init__(self, pairs: Headers) -> None:
        super().__init__({})
        self._pairs = pairs

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)


class HeaderLines(dict[str, str]):
    """Headers for nats-py that keep every value of a repeated name.

    nats-py takes headers as a dict and writes one ``Name: value`` line per ``items()`` pair.
    A header given as an array (``{"Tag": ["a", "b"]}``) becomes one line per value, as the
    Go and Rust clients send multi-valued headers; as a dict it holds the last value of each.
    """

    def __init__(self, pairs: Headers) -> None:
        super().__init__(pairs)
        self._pairs = list(pairs)

    def items(self) -> _PairsView:  # type: ignore[override]
        return _PairsView(self._pairs)


def nats_headers(headers: str | None) -> HeaderLines | None:
    pairs = parse_headers(headers)
    return HeaderLines(pairs) if pairs else None


def publish_stream(kind: PayloadKind, subject: Any, payload: Any, headers: Any) -> None:
    subject = validate_publish_subject(subject)
    data = encode_payload(kind, payload)
    header_lines = nats_headers(headers)
    session = jetstream_session()
    action = f'publish to JetStream subject "{subject}"'

    async def publish(connection: Connection) -> None:
        try:
            await connection.js.publish(subject, data, headers=header_lines)
        except (ValueError, KeyError, TypeError):
            # nats-py could not read the reply as a PubAck: something else answered.
            raise PgnatsError(
                f"{action}: the reply is not a JetStream acknowledgement",
                hint=f'is a core NATS subscriber answering requests on "{subject}"?',
            ) from None
        except nats.js.errors.NoStreamResponseError:
            if not connection.jetstream_enabled:
                raise
            raise NoStream(
                f'{action}: no stream captures subject "{subject}"',
                hint="create a stream whose subjects include it, e.g. "
                f"nats stream add EVENTS --subjects '{subject}'",
            ) from None

    session.run(action, publish, may_have_happened=True)


@sql_function
def nats_publish_binary_stream(subject: Any, payload: Any, headers: Any = None) -> None:
    publish_stream("binary", subject, payload, headers)


@sql_function
def nats_publish_text_stream(subject: Any, payload: Any, headers: Any = None) -> None:
    publish_stream("text", subject, payload, headers)


@sql_function
def nats_publish_json_stream(subject: Any, payload: Any, headers: Any = None) -> None:
    publish_stream("json", subject, payload, headers)


@sql_function
def nats_publish_jsonb_stream(subject: Any, payload: Any, headers: Any = None) -> None:
    publish_stream("jsonb", subject, payload, headers)
