"""The UDP data plane on its own thread: one level-triggered epoll over the client-facing UDP
listeners and the relay sockets of allocations made over UDP.

Why a thread: a Trio wakeup costs about as much as the rest of a relay hop on this machine
(measured: a minimal two-hop Trio relay had twice the round trip of the same loop on epoll), and a
TURN round trip is two hops. The control plane stays in Trio: STUN requests are handed over in one
`run_sync_soon` per poll round, and the state (routes, permissions) is changed only by Trio; this
thread only reads it, plus the traffic counters of UDP allocations, which only it writes.

Sockets registered here are closed here (Trio queues them), so a file descriptor is never closed
under a read in progress and then reused by another allocation's socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import trio

from node.turn._protocol import TurnProtocol, send_action
from node.turn._sockets import read_icmp_errors, send_from_relay
from node.turn.state import Allocation, ChannelBinding, Relay, TurnState
from wire.stun import AddressFamily, StunDecodeError, decode_message_untrusted

log = logging.getLogger("asgard.turn")
_RECV_BYTES = 65_536
_DRAIN = 32
MAX_CONTROL_BACKLOG = 4096  # STUN messages handed to Trio and not processed yet; more are dropped
_SEND_INDICATION = (0x00, 0x16)  # Send indication message type (RFC 8656 §10)
_CHANNEL_HEADER = struct.Struct("!HH")

Control = tuple[bytes, Any, Any]  # (message, listener, client address)


class RelayEngine:
    """Relays ChannelData, Send and Data indications for UDP clients; see the module docstring."""

    def __init__(
        self, state: TurnState, protocol: TurnProtocol, post_control: Callable[[list[Control]], None]
    ) -> None:
        self._state = state
        self._protocol = protocol
        self._post_control = post_control
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._closing: deque[socket.socket] = deque()
        self._owned: dict[int, socket.socket] = {}
        self._control: list[Control] = []
        self._posted = 0  # written by the engine thread only
        self.processed = 0  # written by the Trio thread only (`done`)
        self._stopping = False
        self._closed = False
        self._buf = bytearray(4 + _RECV_BYTES)
        self._view = memoryview(self._buf)
        self.drops: Counter[str] = Counter()
        self.icmp_forwarded = 0
        self._epoll.register(self._wake_fd, select.EPOLLIN)

    # -- called from the Trio thread --------------------------------------------------------------

    def add_listener(self, listener: Any, last_channel_byte: int) -> None:
        """Serve a client-facing UDP listener (the listener socket stays Trio's to close)."""
        handler = self._listener_handler(listener, self._state.routes_for(listener), last_channel_byte)
        self._handlers[listener.sock.fileno()] = handler
        self._epoll.register(listener.sock.fileno(), select.EPOLLIN)

    def add_relay(self, relay: Relay, allocation: Allocation) -> None:
        """Serve a relay socket of a UDP allocation; it is closed here on `remove`."""
        if self._closed:
            relay.sock.close()
            return
        fd = relay.sock.fileno()
        self._owned[fd] = relay.sock
        self._handlers[fd] = self._relay_handler(relay, allocation)
        self._epoll.register(fd, select.EPOLLIN)

    def done(self, count: int) -> None:
        """Trio has processed `count` handed-over STUN messages."""
        self.processed += count

    def remove(self, sock: socket.socket) -> None:
        """Stop serving a relay socket and close it (on the engine thread, or at `close`)."""
        if self._closed:
            sock.close()
            return
        self._closing.append(sock)
        os.eventfd_write(self._wake_fd, 1)

    def stop(self) -> None:
        """Make `run` return."""
        self._stopping = True
        if not self._closed:
            os.eventfd_write(self._wake_fd, 1)

    def close(self) -> None:
        """Release everything once the thread has ended (called by the thread's owner)."""
        if self._closed:
            return
        self._closed = True
        for sock in [*self._owned.values(), *self._closing]:
            sock.close()
        self._owned.clear()
        self._closing.clear()
        self._handlers.clear()
        self._epoll.close()
        os.close(self._wake_fd)

    # -- the thread -----------------------------------------------------------------------------

    def run(self) -> None:
        """Poll until `stop`. The owner calls `close` after the thread has ended."""
        poll, handlers, wake_fd = self._epoll.poll, self._handlers, self._wake_fd
        try:
            while not self._stopping:
                for fd, flags in poll():
                    if fd == wake_fd:
                        self._on_wake()
                        continue
                    handler = handlers.get(fd)
                    if handler is None:
                        continue
                    try:
                        handler(flags)
                    except Exception:  # a bug must not stop relaying for everyone
                        self.drops["internal-error"] += 1
                        log.exception("TURN relay thread: error in a socket handler")
                if self._control:
                    batch, self._control = self._control, []
                    self._posted += len(batch)
                    self._post_control(batch)
        finally:
            self._stopping = True

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake_fd)
        while self._closing:
            sock = self._closing.popleft()
            fd = sock.fileno()
            if fd >= 0:
                self._handlers.pop(fd, None)
                self._owned.pop(fd, None)
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)
            sock.close()

    def _listener_handler(
        self, listener: Any, routes: dict[tuple[Any, int], ChannelBinding], last_first: int
    ) -> Callable[[int], None]:
        recv = listener.sock.recvfrom_into
        buf, view, drops = self._buf, self._view, self.drops
        to_peer = self._to_peer

        def on_readable(flags: int) -> None:
            for _ in range(_DRAIN):
                try:
                    size, addr = recv(buf)
                except BlockingIOError:
                    return
                except OSError:
                    drops["recv-error"] += 1
                    continue
                first = buf[0] if size else 0xFF
                if 0x40 <= first <= last_first and size >= 4:
                    binding = routes.get((addr, first << 8 | buf[1]))
                    length = buf[2] << 8 | buf[3]
                    if binding is None or length + 4 > size:
                        drops["no-channel"] += 1
                        continue
                    allocation = binding.allocation
                    if allocation.bucket is not None:
                        to_peer(binding, view[4 : 4 + length], length)  # the capped (slower) path
                        continue
                    try:
                        binding.send(view[4 : 4 + length], binding.peer)
                    except OSError:
                        drops["send-failed"] += 1
                        continue
                    allocation.to_peer_datagrams += 1
                    allocation.to_peer_bytes += length
                elif first < 4:
                    self._on_stun(bytes(view[:size]), listener, addr)
                else:
                    drops["not-stun"] += 1

        return on_readable

    def _to_peer(self, binding: ChannelBinding, data: memoryview, length: int) -> None:
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

    def _on_stun(self, data: bytes, listener: Any, addr: Any) -> None:
        if (data[0], data[1]) != _SEND_INDICATION:
            if self._posted - self.processed + len(self._control) >= MAX_CONTROL_BACKLOG:
                self.drops["control-overload"] += 1  # Trio is behind: drop like a full socket
                return
            self._control.append((data, listener, addr))
            return
        try:
            message = decode_message_untrusted(data)
        except StunDecodeError:
            self.drops["malformed"] += 1
            return
        action = send_action(message, self._state.allocation(listener, addr))
        if isinstance(action, str):
            self.drops[action] += 1
            return
        allocation = action.allocation
        if allocation.bucket is not None and not allocation.bucket.take(len(action.data), time.monotonic()):
            self.drops["bandwidth"] += 1
            return
        try:
            df = action.dont_fragment and not allocation.dont_fragment
            send_from_relay(action.relay.sock, action.relay.family, action.peer, action.data, df)
        except OSError:
            self.drops["send-failed"] += 1
            return
        allocation.to_peer_datagrams += 1
        allocation.to_peer_bytes += len(action.data)

    def _relay_handler(self, relay: Relay, allocation: Allocation) -> Callable[[int], None]:
        sock = relay.sock
        recv = sock.recvfrom_into
        buf, view = self._buf, self._view
        payload = view[4:]
        pack = _CHANNEL_HEADER.pack_into
        by_peer, permissions = allocation.channel_by_peer, allocation.permissions
        listener: Any = allocation.tag
        client_send, client_addr = listener.sock.sendto, allocation.client_addr
        v6 = relay.family == AddressFamily.IPV6
        drops = self.drops

        def on_readable(flags: int) -> None:
            if flags & select.EPOLLERR:
                self._on_icmp(sock, allocation)
            if not allocation.alive:
                return
            for _ in range(_DRAIN):
                try:
                    size, peer = recv(payload)
                except BlockingIOError:
                    return
                except OSError:
                    self._on_icmp(sock, allocation)
                    continue
                if v6:
                    peer = (peer[0], peer[1])
                bucket = allocation.bucket
                if bucket is not None and not bucket.take(size, time.monotonic()):
                    drops["bandwidth"] += 1
                    continue
                channel = by_peer.get(peer)
                if channel is not None:
                    pack(buf, 0, channel, size)
                    message: memoryview | bytes = view[: 4 + size]
                elif peer[0] in permissions:
                    message = self._protocol.data_indication(peer, payload[:size])
                else:
                    drops["no-permission"] += 1
                    continue
                try:
                    client_send(message, client_addr)
                except OSError:
                    drops["send-failed"] += 1
                    continue
                allocation.to_client_datagrams += 1
                allocation.to_client_bytes += size

        return on_readable

    def _on_icmp(self, sock: socket.socket, allocation: Allocation) -> None:
        for error in read_icmp_errors(sock):
            data = self._protocol.icmp_indication(
                allocation, error.peer, error.icmp_type, error.icmp_code, error.info
            )
            if data is None:
                continue
            listener: Any = allocation.tag
            try:
                listener.sock.sendto(data, allocation.client_addr)
                self.icmp_forwarded += 1
            except OSError:
                self.drops["send-failed"] += 1


def poster(callback: Callable[[list[Control]], None]) -> Callable[[list[Control]], None]:
    """A thread-safe function that runs `callback(batch)` in the calling Trio run."""
    token = trio.lowlevel.current_trio_token()

    def post(batch: list[Control]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(callback, batch)

    return post


async def run_engine(engine: RelayEngine) -> None:
    """Run `engine` on its own thread for as long as this task runs; stop and join it on
    cancellation; re-raise what made the thread fail."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    failure: list[BaseException] = []

    def body() -> None:
        try:
            engine.run()
        except BaseException as exc:
            failure.append(exc)
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

    thread = threading.Thread(target=body, name="turn-relay", daemon=True)
    thread.start()
    try:
        await done.wait()
    finally:
        engine.stop()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join)
        engine.close()  # only now: no descriptor is closed under the thread's feet
    if failure:
        raise failure[0]
    raise RuntimeError("the TURN relay thread stopped")
