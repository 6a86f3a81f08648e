"""Dialling a peer link: the client end of `asgard.v1.Mesh/Link` on the Trio thread (`_h2end`).

One connection per link: HEADERS `POST /asgard.v1.Mesh/Link` on stream 1 with `te: trailers`
and `content-type: application/grpc`, then the link's messages; `close()` ends the stream with
END_STREAM after what is queued, and the connection closes once the acceptor's trailers arrived
(or `END_WAIT_S` later). A non-OK `grpc-status`, a reset, a GOAWAY, a protocol error or a lost
connection end the link with `Unavailable`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h2.errors
import h2.events
import trio

from node.errors import Unavailable
from node.mesh._h2end import (
    END_WAIT_S,
    LINK_ERRORS,
    MAX_MESSAGE_BYTES,
    PRE_AUTH_MESSAGE_BYTES,
    H2End,
    unavailable,
)
from node.mesh._peer import LINK, PeerStream
from node.mesh._wire import connect_wire

_STREAM = 1


class _DialledEnd(H2End):
    """The client end of a dialled link."""

    client_side = True

    def __init__(self, peer: PeerStream, window: int, max_message_bytes: int, pre_auth_message_bytes: int,
                 authority: str, scheme: str) -> None:  # fmt: skip
        super().__init__(peer, window, max_message_bytes, pre_auth_message_bytes)
        self._authority = authority
        self._scheme = scheme
        self._status_error: Unavailable | None = None

    def _start(self) -> None:
        headers = [
            (":method", "POST"),
            (":scheme", self._scheme),
            (":path", LINK),
            (":authority", self._authority),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("user-agent", "asgard-mesh"),
        ]
        self._h2.send_headers(_STREAM, headers)
        self._stream_id = _STREAM

    def _end_stream(self) -> None:
        self._h2.end_stream(_STREAM)

    def _abort_stream(self, error: Unavailable) -> None:
        self._h2.reset_stream(_STREAM, h2.errors.ErrorCodes.CANCEL)

    def _event(self, event: h2.events.Event) -> bool:
        if isinstance(event, h2.events.ResponseReceived):
            self._headers(event.headers or [])
            self._rx_open = True  # the acceptor's messages follow its response headers
        elif isinstance(event, h2.events.TrailersReceived):
            self._headers(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            self._error = self._status_error
            return True
        else:
            self._connection_event(event)
        return False

    def _headers(self, headers: list[tuple[str, str]] | list[tuple[bytes, bytes]]) -> None:
        fields = {str(k): str(v) for k, v in headers}
        status = fields.get(":status")
        if status is not None and status != "200":
            raise Unavailable(f"the peer answered HTTP status {status}")
        kind = fields.get("content-type")
        if kind is not None and not kind.startswith("application/grpc"):
            raise Unavailable(f"the peer answered content-type {kind[:60]!r}")
        grpc_status = fields.get("grpc-status")
        if grpc_status is not None and grpc_status != "0":
            detail = fields.get("grpc-message", "")[:200]
            self._status_error = Unavailable(f"the peer ended the link: grpc-status {grpc_status} {detail}")


@asynccontextmanager
async def open_link(
    host: str,
    port: int,
    *,
    window: int,
    queue_max: int,
    connect_timeout_s: float,
    tls: ssl.SSLContext | None = None,
    tls_server_name: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    pre_auth_message_bytes: int = PRE_AUTH_MESSAGE_BYTES,
) -> AsyncIterator[PeerStream]:
    """Dial `host:port` (a peer's mesh listener) from Trio and open a link; it is closed when the
    block ends. A peer that cannot be reached shows up as `Unavailable` from the first `receive()`.
    """
    peer = PeerStream(window=window, queue_max=queue_max, remote=f"{host}:{port}")
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme = "https" if tls is not None else "http"
    end = _DialledEnd(peer, window, max_message_bytes, pre_auth_message_bytes, authority, scheme)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_dial, end, host, port, connect_timeout_s, tls, tls_server_name)
            try:
                yield peer
            finally:
                peer.close()
                with trio.CancelScope(shield=True), trio.move_on_after(END_WAIT_S):
                    await end.finished.wait()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery is an implementation detail: the block's own error comes out as itself.
        if len(group.exceptions) != 1:
            raise
        error = group.exceptions[0]
        raise error from error.__cause__


async def _dial(
    end: _DialledEnd,
    host: str,
    port: int,
    connect_timeout_s: float,
    tls: ssl.SSLContext | None,
    tls_server_name: str | None,
) -> None:
    try:
        try:
            with trio.fail_after(connect_timeout_s):
                wire = await connect_wire(host, port, tls, tls_server_name)
        except LINK_ERRORS as exc:
            end.end(unavailable(exc))
            return
        await end.run(wire)
    finally:
        end.finished.set()
