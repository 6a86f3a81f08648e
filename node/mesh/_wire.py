"""Non-blocking socket I/O for the peer links (`_h2end`, dialled and accepted): writes go to the
kernel at once without waiting, a rest the kernel did not take is kept and drained by a waiting
task; TLS runs through `ssl.SSLObject` on memory BIOs, so it needs no writes of its own."""

from __future__ import annotations

import contextlib
import socket as stdlib_socket
import ssl

import trio

from node.errors import Unavailable

RECEIVE_BYTES = 1 << 16


class PlainWire:
    """A connected non-blocking TCP socket (Trio thread)."""

    def __init__(self, sock: stdlib_socket.socket | None) -> None:
        self._sock = sock
        self._tail: list[bytes] = []
        self.pending_bytes = 0

    @property
    def pending(self) -> bool:
        """True while bytes the kernel did not take wait for `drain`."""
        return bool(self._tail)

    def _raw_write(self, data: bytes) -> bool:
        """Write `data` as far as the kernel takes it now; True when a rest waits for `drain`."""
        if self._tail:
            self._tail.append(data)
            self.pending_bytes += len(data)
            return True
        assert self._sock is not None
        try:  # (`_send`, inlined: once per message)
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._tail.append(data[sent:])
            self.pending_bytes = len(data) - sent
            return True
        return False

    def _send(self, data: bytes) -> int:
        assert self._sock is not None
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    async def drain(self) -> None:
        """Wait until the kernel has taken every pending byte."""
        assert self._sock is not None
        while self._tail:
            await trio.lowlevel.wait_writable(self._sock)
            data = b"".join(self._tail)
            self._tail.clear()
            sent = self._send(data)
            self.pending_bytes = len(data) - sent
            if sent < len(data):
                self._tail.append(data[sent:])

    async def _raw_receive(self) -> bytes:
        """The next bytes from the peer; b"" at the end of the connection."""
        assert self._sock is not None
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            try:
                return self._sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                continue

    # Plain TCP: the raw calls themselves (one call less per message each way); TLS overrides them.
    write_nowait = _raw_write
    receive = _raw_receive

    async def linger(self) -> None:
        """Half-close, then read and drop until the peer closes too (the caller bounds it in time):
        closing with unread bytes would reset the connection and could lose what we wrote last."""
        assert self._sock is not None
        with contextlib.suppress(OSError):
            self._sock.shutdown(stdlib_socket.SHUT_WR)
            while await self._raw_receive():
                pass

    def close(self) -> None:
        """Close the socket (no task may be waiting on it any more)."""
        if self._sock is not None:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()


class TlsWire(PlainWire):
    """TLS over a `PlainWire`'s socket, encrypted and decrypted in memory."""

    def __init__(self, sock: stdlib_socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:  # fmt: skip
        super().__init__(sock)
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self._eof = False

    def write_nowait(self, data: bytes) -> bool:
        self._tls.write(data)
        return self._raw_write(self._outgoing.read())

    async def receive(self) -> bytes:
        while True:
            plain = self._read_plain()
            if plain is not None:
                return plain
            data = await self._raw_receive()
            if not data:
                return b""
            self._incoming.write(data)

    def _read_plain(self) -> bytes | None:
        """Decrypted bytes, b"" after the peer's close_notify, None when more must be read."""
        if self._eof:
            return b""
        chunks = []
        while True:
            try:
                chunk = self._tls.read(RECEIVE_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._eof = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        if self._outgoing.pending:  # e.g. a TLS 1.3 KeyUpdate answer
            self._raw_write(self._outgoing.read())
        if chunks:
            return b"".join(chunks)
        return b"" if self._eof else None

    async def linger(self) -> None:
        """Say close_notify (RFC 8446 §6.1) before the half-close, so a TLS peer ends at once."""
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()  # writes close_notify; the peer's answer is not awaited here
        if self._outgoing.pending:
            self._raw_write(self._outgoing.read())
            await self.drain()
        await super().linger()

    async def handshake(self) -> None:
        """Run the TLS handshake (the caller bounds it in time)."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            self._raw_write(self._outgoing.read())
            await self.drain()
            data = await self._raw_receive()
            if not data:
                raise Unavailable("the peer closed the connection during the TLS handshake")
            self._incoming.write(data)
        self._raw_write(self._outgoing.read())
        await self.drain()
        if self._tls.selected_alpn_protocol() != "h2":
            raise Unavailable("the peer did not agree to HTTP/2 over TLS (ALPN h2)")


Wire = PlainWire


def _plain(stream: trio.SocketStream) -> stdlib_socket.socket:
    sock = stdlib_socket.socket(fileno=stream.socket.detach())
    sock.setblocking(False)
    return sock


async def _tls_wire(sock: stdlib_socket.socket, tls: ssl.SSLContext, server_name: str | None) -> TlsWire:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server_name is None
    obj = tls.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_name)
    wire = TlsWire(sock, obj, incoming, outgoing)
    try:
        await wire.handshake()
    except BaseException:
        wire.close()
        raise
    return wire


async def accept_wire(stream: trio.SocketStream, tls: ssl.SSLContext | None) -> PlainWire:
    """An accepted connection as a wire, after the TLS handshake when `tls` is set (the caller
    bounds it in time)."""
    sock = _plain(stream)
    if tls is None:
        return PlainWire(sock)
    return await _tls_wire(sock, tls, None)


async def connect_wire(
    host: str, port: int, tls: ssl.SSLContext | None, server_name: str | None
) -> PlainWire:
    """A connected wire to `host:port` (TCP_NODELAY: Trio's default), with TLS when `tls` is set."""
    sock = _plain(await trio.open_tcp_stream(host, port))
    if tls is None:
        return PlainWire(sock)
    return await _tls_wire(sock, tls, server_name or host)
