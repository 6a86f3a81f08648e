"""The Trio-only data plane: relay sockets of TCP clients' allocations, and every UDP socket when
the relay thread is off (`relay_thread = false`, e.g. under a mock clock in tests). Each socket is
drained with non-blocking `recvfrom_into` before the task waits again; a datagram that cannot be
sent at once is dropped and counted."""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from node.turn._protocol import Client, TurnProtocol
from node.turn._sockets import read_icmp_errors
from node.turn._transports import PADDING, TcpClient, UdpListener
from node.turn.state import Allocation, ChannelBinding, Relay, TurnState
from wire.stun import AddressFamily

_CHANNEL_HEADER = struct.Struct("!HH")
_DRAIN_BATCH = 64
_RECV_BYTES = 65_536


class TrioRelay:
    """Relay loops run as Trio tasks in the service's nursery."""

    def __init__(
        self, state: TurnState, protocol: TurnProtocol, on_stun: Callable[[bytes, Client], None]
    ) -> None:
        self._state = state
        self._protocol = protocol
        self._on_stun = on_stun
        self.drops: Counter[str] = Counter()
        self.icmp_forwarded = 0

    def deliver(self, tag: object, addr: Any, data: bytes) -> None:
        """Send `data` to a client over its transport."""
        if isinstance(tag, UdpListener):
            try:
                tag.sock.sendto(data, addr)
            except OSError:
                self.drops["send-failed"] += 1
        elif isinstance(tag, TcpClient):
            tag.deliver(data)

    def to_peer(self, binding: ChannelBinding, data: memoryview | bytes, length: int) -> None:
        """Relay one ChannelData payload to its channel's peer."""
        allocation = binding.allocation
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(length, time.monotonic()):
            self.drops["bandwidth"] += 1
            return
        try:
            binding.send(data, binding.peer)
        except OSError:
            self.drops["send-failed"] += 1
            return
        allocation.to_peer_datagrams += 1
        allocation.to_peer_bytes += length

    async def serve_udp(self, listener: UdpListener, last_channel_byte: int) -> None:
        """Read a client-facing UDP socket: relay ChannelData, hand STUN to the protocol."""
        sock = listener.sock
        recv = sock.recvfrom_into
        routes = self._state.routes_for(listener)
        buf = bytearray(_RECV_BYTES)
        view = memoryview(buf)
        drops = self.drops
        budget = 0
        while True:
            try:
                size, addr = recv(buf)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                budget = 0
                continue
            except OSError:
                drops["recv-error"] += 1
                continue
            first = buf[0] if size else 0xFF
            if 0x40 <= first <= last_channel_byte and size >= 4:
                binding = routes.get((addr, first << 8 | buf[1]))
                length = buf[2] << 8 | buf[3]
                if binding is None or length + 4 > size:
                    drops["no-channel"] += 1
                else:
                    self.to_peer(binding, view[4 : 4 + length], length)
            elif first < 4:
                self._on_stun(bytes(view[:size]), Client(listener, addr, "udp"))
            else:
                drops["not-stun"] += 1
            budget += 1
            if budget >= _DRAIN_BATCH:
                budget = 0
                await trio.lowlevel.checkpoint()

    async def serve_relay(self, relay: Relay, allocation: Allocation, scope: trio.CancelScope) -> None:
        """Read one relay socket until `scope` is cancelled, then close the socket."""
        sock: socket.socket = relay.sock
        try:
            with scope:
                await self._drain(sock, relay, allocation)
        finally:
            sock.close()

    async def _drain(self, sock: socket.socket, relay: Relay, allocation: Allocation) -> None:
        recv = sock.recvfrom_into
        buf = bytearray(4 + _RECV_BYTES)
        view = memoryview(buf)
        payload = view[4:]
        pack = _CHANNEL_HEADER.pack_into
        by_peer, permissions = allocation.channel_by_peer, allocation.permissions
        tag, client_addr = allocation.tag, allocation.client_addr
        udp_send = tag.sock.sendto if isinstance(tag, UdpListener) else None
        tcp_client = tag if isinstance(tag, TcpClient) else None
        v6 = relay.family == AddressFamily.IPV6
        drops = self.drops
        budget = 0
        woke = False
        while True:
            try:
                size, peer = recv(payload)
            except BlockingIOError:
                if woke:  # woken without data: an ICMP error is queued (IP_RECVERR)
                    self._on_icmp(sock, allocation)
                await trio.lowlevel.wait_readable(sock)
                woke, budget = True, 0
                continue
            except OSError:
                self._on_icmp(sock, allocation)
                continue
            woke = False
            if v6:
                peer = (peer[0], peer[1])
            bucket = allocation.bucket
            channel = by_peer.get(peer)
            if bucket is not None and not bucket.take(size, time.monotonic()):
                drops["bandwidth"] += 1
            elif channel is not None:
                pack(buf, 0, channel, size)
                if udp_send is not None:
                    try:
                        udp_send(view[: 4 + size], client_addr)
                    except OSError:
                        drops["send-failed"] += 1
                        continue
                elif tcp_client is None or not tcp_client.deliver(
                    bytes(view[: 4 + size]) + PADDING[size & 3]
                ):
                    continue
                allocation.to_client_datagrams += 1
                allocation.to_client_bytes += size
            elif peer[0] in permissions:
                self.deliver(tag, client_addr, self._protocol.data_indication(peer, payload[:size]))
                allocation.to_client_datagrams += 1
                allocation.to_client_bytes += size
            else:
                drops["no-permission"] += 1
            budget += 1
            if budget >= _DRAIN_BATCH:
                budget = 0
                await trio.lowlevel.checkpoint()

    def _on_icmp(self, sock: socket.socket, allocation: Allocation) -> None:
        for error in read_icmp_errors(sock):
            data = self._protocol.icmp_indication(
                allocation, error.peer, error.icmp_type, error.icmp_code, error.info
            )
            if data is not None:
                self.deliver(allocation.tag, allocation.client_addr, data)
                self.icmp_forwarded += 1
