"""The two client transports: a UDP listener (shared by many clients) and one TCP connection.

Either object is the "tag" of the 5-tuples (and allocations) that come through it. TURN over TCP
(RFC 8656 §5) has one reader and exactly one writer task per connection; the writer drains a
bounded queue and sends what has gathered in one `send_all` (frames over the bound are dropped
and counted, like UDP).
"""

from __future__ import annotations

import socket

import trio

_BATCH_BYTES = 64 * 1024
PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # indexed by length % 4 (RFC 8656 §12.5)


class UdpListener:
    """A client-facing UDP socket."""

    __slots__ = ("address", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]


class TcpClient:
    """One TCP client connection."""

    __slots__ = ("_receive", "_send", "addr", "dropped", "stream")

    def __init__(self, stream: trio.SocketStream, addr: tuple[str, int], queue_frames: int) -> None:
        self.stream = stream
        self.addr = addr
        self.dropped = 0
        self._send, self._receive = trio.open_memory_channel[bytes](queue_frames)

    def deliver(self, data: bytes) -> bool:
        """Queue `data` for the writer; False (and counted) when the queue is full or closed."""
        try:
            self._send.send_nowait(data)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            return False
        return True

    async def write_loop(self, write_timeout_s: float) -> None:
        """Send queued frames until the queue closes; return early when the peer stops reading."""
        async with self._receive:
            async for first in self._receive:
                chunks = [first]
                size = len(first)
                while size < _BATCH_BYTES:
                    try:
                        chunk = self._receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                try:
                    with trio.move_on_after(write_timeout_s) as scope:
                        await self.stream.send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the peer went away
                if scope.cancelled_caught:
                    return

    def close_queue(self) -> None:
        """Stop accepting frames."""
        self._send.close()
