"""A small Trio device client for the Asgard relay (docs/protocol.md, docs/relay.md).

    async with open_device_client(url, token=..., device_id=..., network_id=...) as client:
        ack = await client.send(other_device, b"hello", durable=True)
        async for message in client:
            ...

It connects (token in the `Authorization` header, or a HELLO first message), registers, sends
HEARTBEATs, routes ACK/NACK answers to the `send` that waits for them, hands received data frames
to the application in order (dropping duplicates by (source, message id)), answers DELIVERED for
DURABLE ones once the application has taken them, and reconnects with exponential backoff and
jitter, except when the node ended the session for good (4000 replaced, 4001, 4002, 4003).
Lock requests go through `client.locks` (node.client._locks). The WebSocket protocol is the
client's own RFC 6455 codec, driven by the reading task itself (node.client._ws says why).
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import trio

from node.client._locks import LockCalls
from node.client._types import (
    Ack,
    ConnectionLost,
    Deadlines,
    Message,
    NackError,
    Pending,
    SeenIds,
    SessionEnded,
)
from node.client._ws import ClientWebSocket, WsClosed, WsHandshakeError, WsRejected
from wire import DecodeError
from wire.device import (
    DATA_TYPES,
    LOCK_TYPES,
    AnycastPolicy,
    Delivered,
    Event,
    Flags,
    FrameType,
    FrameView,
    Heartbeat,
    Hello,
    Register,
    Registered,
    Welcome,
    decode_ack_untrusted,
    decode_control_untrusted,
    decode_frame_untrusted,
    decode_nack_untrusted,
    encode_control,
    encode_frame,
)

FINAL_CLOSE_CODES = frozenset({4000, 4001, 4002, 4003})
_MAX_FRAME = (1 << 28) + 48


@dataclass
class ClientSettings:
    """How a DeviceClient connects and behaves; every value has a sensible default."""

    auth: Literal["header", "hello"] = "header"
    name: str = "device"
    world_type: str = "physical"
    capabilities: tuple[str, ...] = ()
    hardware_spec: dict[str, Any] | None = None
    client: str = "asgard-client/1"
    reconnect: bool = True
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    heartbeat_interval_s: float | None = None  # None: half the interval the node asks for
    receive_buffer: int = 1024
    event_buffer: int = 256
    dedup_capacity: int = 10_000
    auto_delivered: bool = True
    lock_wait_max_s: float = 3600.0  # an ACQUIRE without wait_s waits at most this (+ ack_timeout_s)
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class DeviceClient:
    """One device's connection to a node, kept up across reconnects (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        device_id: uuid.UUID | str,
        network_id: uuid.UUID | str,
        settings: ClientSettings | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.device_id = uuid.UUID(str(device_id))
        self.network_id = uuid.UUID(str(network_id))
        self.settings = settings or ClientSettings()
        self.welcome: Welcome | None = None
        self.registered: Registered | None = None
        self.sessions = 0  # successful registrations (1 + reconnects)
        self.duplicates = 0
        self.unsolicited_nacks: deque[NackError] = deque(maxlen=1000)
        self.ended: SessionEnded | None = None
        self._ws: ClientWebSocket | None = None
        self._waiters: dict[int, Pending[Ack]] = {}
        self._next_id = secrets.randbits(40) << 16
        self._seen = SeenIds(self.settings.dedup_capacity)
        self._inbox_send, self._inbox = trio.open_memory_channel[Message](self.settings.receive_buffer)
        self._events_send, self._events = trio.open_memory_channel[Event](self.settings.event_buffer)
        self._stopping = False
        self._fatal: NackError | None = None
        self._up = trio.Event()  # set while a session is registered
        self._close_requested = trio.Event()
        self._running = False
        self._finished = trio.Event()
        self.deadlines = Deadlines()
        """The answer waits' deadlines (ACKs and lock calls): one timer task per session."""
        self.locks = LockCalls(self)
        """Lock requests on this device's session (node.client._locks)."""

    async def wait_connected(self) -> None:
        """Wait until a session is registered (at once when one is)."""
        await self._up.wait()

    # ------------------------------------------------------------------ connection loop
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, register and serve; reconnect with backoff. Reports started once registered.

        Raises SessionEnded when the node ends the session for good before the first registration.
        """
        delay = self.settings.backoff_initial_s
        started = False
        self._running = True
        try:
            while not self._stopping:
                code, reason = await self._one_session(task_status if not started else None)
                started = started or self.sessions > 0
                if self.sessions and code is None:
                    delay = self.settings.backoff_initial_s
                if code in FINAL_CLOSE_CODES or not self.settings.reconnect or self._stopping:
                    self.ended = SessionEnded(code or 1006, reason)
                    if not started:
                        raise self._fatal or self.ended
                    return
                with trio.move_on_after(delay * (0.5 + random.random() / 2)):  # equal jitter
                    await self._close_requested.wait()
                delay = min(delay * 2, self.settings.backoff_max_s)
        finally:
            self._running = False
            self._finished.set()
            self._inbox_send.close()
            self._events_send.close()

    async def _one_session(self, task_status: trio.TaskStatus[None] | None) -> tuple[int | None, str]:
        """Run one connection; return its close (code, reason)."""
        url = urlsplit(self.url)
        try:
            with trio.fail_after(self.settings.connect_timeout_s):
                stream = await trio.open_tcp_stream(url.hostname or "127.0.0.1", url.port or 80)
        except (OSError, trio.TooSlowError) as exc:
            return None, str(exc)
        closed: tuple[int | None, str] = (None, "")
        try:
            async with trio.open_nursery() as nursery:
                closed = await self._session_on(nursery, stream, url.netloc, url.path or "/", task_status)
                nursery.cancel_scope.cancel()
        except* (OSError, trio.BrokenResourceError, WsHandshakeError) as group:
            closed = None, str(group.exceptions[0])
        finally:
            self._ws = None
            if self._up.is_set():
                self._up = trio.Event()
            self._fail_waiters(ConnectionLost("the connection closed before the answer"))
            with trio.CancelScope(shield=True):
                await stream.aclose()
        return closed

    async def _session_on(
        self,
        nursery: trio.Nursery,
        stream: trio.SocketStream,
        host: str,
        resource: str,
        task_status: trio.TaskStatus[None] | None,
    ) -> tuple[int | None, str]:
        headers = list(self.settings.extra_headers)
        if self.settings.auth == "header":
            headers.append((b"Authorization", b"Bearer " + self.token.encode()))
        ws = None
        try:
            with trio.fail_after(self.settings.connect_timeout_s):
                ws = ClientWebSocket(stream, max_message_bytes=_MAX_FRAME)
                await ws.handshake(host, resource, headers)
                await self._handshake(ws)
            self._ws = ws
            self.sessions += 1
            self._up.set()
            if task_status is not None:
                task_status.started()
            return await self._serve(ws)
        except WsClosed as exc:
            return exc.code, exc.reason
        except WsRejected as exc:
            return (4001 if exc.status in (401, 403) else None), f"HTTP {exc.status}"
        except (OSError, trio.BrokenResourceError, WsHandshakeError, trio.TooSlowError) as exc:
            return None, str(exc)
        except NackError as exc:  # REGISTER refused: retrying would not help
            self._fatal = exc
            return 4002, str(exc)
        finally:
            if ws is not None:
                with trio.move_on_after(self.settings.connect_timeout_s) as scope:
                    scope.shield = True
                    await ws.aclose()

    async def _handshake(self, ws: ClientWebSocket) -> None:
        if self.settings.auth == "hello":
            hello = Hello(token=self.token, client=self.settings.client)
            await ws.send(encode_control(hello, message_id=self._new_id()))
        welcome = await self._expect(ws, FrameType.WELCOME)
        assert isinstance(welcome, Welcome)
        self.welcome = welcome
        s = self.settings
        register = Register(
            device_id=self.device_id,
            network_id=self.network_id,
            name=s.name,
            world_type=s.world_type,
            capabilities=s.capabilities or None,
            hardware_spec=s.hardware_spec,
        )
        await ws.send(encode_control(register, message_id=self._new_id(), source=self.device_id))
        registered = await self._expect(ws, FrameType.REGISTERED)
        assert isinstance(registered, Registered)
        self.registered = registered

    async def _expect(self, ws: ClientWebSocket, ftype: int) -> object:
        """The next frame must be `ftype` (a NACK raises NackError, anything else is a protocol error)."""
        frame = _decode(await ws.receive())
        if frame.type == FrameType.NACK:
            nack = decode_nack_untrusted(frame.payload)
            raise NackError(frame.message_id, nack.reason, nack.detail)
        if frame.type != ftype:
            raise WsHandshakeError(f"expected frame type {ftype:#04x}, got {frame.type:#04x}")
        return decode_control_untrusted(frame)

    async def _serve(self, ws: ClientWebSocket) -> tuple[int | None, str]:
        """Read until the connection closes; return the close (code, reason)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats, ws)
            nursery.start_soon(self.deadlines.run)
            nursery.start_soon(self._close_when_asked, ws)
            try:
                await self._read(ws)
            except WsClosed as exc:
                return exc.code, exc.reason
            finally:
                nursery.cancel_scope.cancel()
        return None, ""

    async def _close_when_asked(self, ws: ClientWebSocket) -> None:
        """Start the close handshake; the reading task ends with the node's answer."""
        await self._close_requested.wait()
        await ws.aclose()

    async def _heartbeats(self, ws: ClientWebSocket) -> None:
        assert self.welcome is not None
        interval = self.settings.heartbeat_interval_s or self.welcome.heartbeat_interval_s / 2
        while True:
            await trio.sleep(interval)
            frame = encode_control(
                Heartbeat(status="active"), message_id=self._new_id(), source=self.device_id
            )
            await ws.send(frame)

    async def _read(self, ws: ClientWebSocket) -> None:
        while True:
            raw = await ws.receive()
            try:
                frame = _decode(raw)
            except DecodeError:
                continue  # a newer node's frame this client does not understand
            ftype = frame.type
            if ftype in DATA_TYPES:
                await self._inbox_send.send(Message.of(frame))
            elif ftype == FrameType.ACK:
                ack = decode_ack_untrusted(frame.payload)
                self._resolve(frame.message_id, Ack(frame.message_id, ack.status, ack.recipients))
            elif ftype == FrameType.NACK:
                nack = decode_nack_untrusted(frame.payload)
                error = NackError(frame.message_id, nack.reason, nack.detail)
                if not self._resolve(frame.message_id, error) and not self.locks.fail(
                    frame.message_id, error
                ):
                    self.unsolicited_nacks.append(error)
            elif ftype in LOCK_TYPES:
                self.locks.on_frame(frame)
            elif ftype == FrameType.EVENT:
                message = decode_control_untrusted(frame)
                if isinstance(message, Event):
                    with suppress(trio.WouldBlock):  # a watcher that does not read loses new events
                        self._events_send.send_nowait(message)

    def _resolve(self, message_id: int, result: Ack | BaseException) -> bool:
        waiter = self._waiters.get(message_id)
        return waiter is not None and waiter.settle(result)

    def _fail_waiters(self, error: BaseException) -> None:
        self.locks.fail_all(error)
        for message_id in list(self._waiters):
            self._resolve(message_id, error)
        self.deadlines.clear()  # every slot is settled now

    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) & ((1 << 64) - 1)
        return self._next_id

    # ------------------------------------------------------------------ sending
    async def send(
        self,
        destination: uuid.UUID | bytes,
        payload: bytes,
        *,
        kind: int = FrameType.DIRECT,
        durable: bool = False,
        ack: bool = True,
        policy: AnycastPolicy = AnycastPolicy.SERVER_DEFAULT,
    ) -> Ack | None:
        """Send one data frame; with `ack`, wait for the node's ACK (NackError on a NACK).

        `destination`: a device id (DIRECT), network id (BROADCAST), `group_id(...)` (MULTICAST)
        or `capability_id(...)` (ANYCAST).
        """
        flags = (Flags.ACK_REQUESTED if ack else 0) | (Flags.DURABLE if durable else 0)
        flags |= int(policy) << 8
        frame = encode_frame(
            kind,
            message_id=self._new_id(),
            source=self.device_id,
            destination=destination,
            payload=payload,
            flags=flags,
        )
        return await self.send_frame(frame, wait_ack=ack)

    async def send_frame(self, frame: bytes, *, wait_ack: bool) -> Ack | None:
        """Send a prepared frame; with `wait_ack`, wait for the ACK or NACK of its message id."""
        ws = self._ws
        if ws is None:
            raise ConnectionLost("not connected")
        message_id = int.from_bytes(frame[4:12], "big")
        if not wait_ack:
            await ws.send(frame)
            return None
        waiter = self._waiters[message_id] = Pending[Ack]()
        try:
            await ws.send(frame, then_waits=True)
            self.deadlines.add(trio.current_time() + self.settings.ack_timeout_s, waiter)
            await waiter.done.wait()
        except WsClosed:
            raise ConnectionLost("the connection closed while sending") from None
        finally:
            del self._waiters[message_id]
            waiter.settle(ConnectionLost("the wait was cancelled"))  # if still open: off the timer
        return waiter.outcome()  # TooSlowError when the deadline settled it

    async def control(self, message: Any, *, ack: bool = True) -> Ack | None:
        """Send a control message (JOIN, LEAVE, SUBSCRIBE, UNSUBSCRIBE, ...), waiting for its ACK."""
        frame = encode_control(
            message, message_id=self._new_id(), source=self.device_id, flags=Flags.ACK_REQUESTED if ack else 0
        )
        return await self.send_frame(frame, wait_ack=ack)

    # ------------------------------------------------------------------ receiving
    async def receive(self) -> Message:
        """The next data frame, duplicates dropped; DURABLE ones are confirmed (auto_delivered).

        Raises trio.EndOfChannel once the client has stopped for good.
        """
        while True:
            message = await self._inbox.receive()
            fresh = self._seen.add((message.raw[12:28], message.message_id))
            if message.durable and ((fresh and self.settings.auto_delivered) or not fresh):
                await self.delivered(message)
            if fresh:
                return message
            self.duplicates += 1

    async def delivered(self, message: Message) -> None:
        """Tell the node a DURABLE message was processed (it then deletes it from its queue)."""
        ws = self._ws
        if ws is None:
            return  # the node sends it again on the next session; it is confirmed then
        frame = encode_control(
            Delivered(), message_id=message.message_id, source=self.device_id, destination=message.source
        )
        with suppress(WsClosed):
            await ws.send(frame)

    async def events(self) -> Event:
        """The next EVENT (after SUBSCRIBE)."""
        return await self._events.receive()

    def __aiter__(self) -> DeviceClient:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    # ------------------------------------------------------------------ closing
    async def aclose(self) -> None:
        """Close the connection normally (1000), stop reconnecting, wait for `run` to return."""
        self._stopping = True
        self._close_requested.set()
        if self._running:
            with trio.move_on_after(self.settings.connect_timeout_s + 1):
                await self._finished.wait()


def _decode(raw: bytes | str) -> FrameView:
    if isinstance(raw, str):
        raise DecodeError("text message")
    return decode_frame_untrusted(raw, max_payload=_MAX_FRAME)


@asynccontextmanager
async def open_device_client(
    url: str,
    *,
    token: str,
    device_id: uuid.UUID | str,
    network_id: uuid.UUID | str,
    settings: ClientSettings | None = None,
    **options: Any,
) -> AsyncIterator[DeviceClient]:
    """Connect and register a DeviceClient; close it on exit. `options` override ClientSettings."""
    if options:
        base = settings or ClientSettings()
        settings = ClientSettings(**{**base.__dict__, **options})
    client = DeviceClient(url, token=token, device_id=device_id, network_id=network_id, settings=settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        try:
            yield client
        finally:
            with trio.move_on_after(client.settings.connect_timeout_s) as scope:
                scope.shield = True
                await client.aclose()
            nursery.cancel_scope.cancel()
