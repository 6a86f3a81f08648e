"""The benchmark's device client: `websockets` on uvloop, the same code for Asgard and the anchor.

    python -m bench.relay.client ROLE --proto {asgard,anchor} --url URL [options]

Roles (each prints "READY" once connected, then one JSON line when done):
  pingpong  measures round trips A -> relay -> B -> relay -> A (`--count` after `--warmup`)
  echo      B: sends every message it receives back to A, until stdin closes
  publish   sends `--count` messages of `--size` bytes as fast as the library lets it
  subscribe counts `--count` messages (or stops after `--idle-timeout` without one)
  idle      opens `--connections` connections and holds them until stdin closes
  slow      connects, then never reads again, until stdin closes
  flood     sends `--size` messages to `--peer` without pause until stdin closes (reads what
            comes back so its own connection never stalls)
  rawpub    like publish, but a plain socket writes prebuilt frames in large writes (no client
            library: the relay's own forwarding rate)
  rawsub    like subscribe, on a plain socket that only counts frames

For the anchor (../shared/anchors/ws_relay.py) a message is the payload alone and the room is the
URL path. For Asgard a message is a device frame: a 48-byte header (DIRECT, best effort, no ACK
requested) and the same payload; each connection authenticates with a service token in the
`Authorization` header and REGISTERs its own device id. Loopback only; everything is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import struct
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlparse

import uvloop
from websockets.asyncio.client import ClientConnection, connect

HEADER = struct.Struct("!BBHQ16s16sI")
DIRECT, REGISTER = 0x10, 0x03
SEQ = struct.Struct("!Q")
MAX_SIZE = 2**21


class Endpoint:
    """One connection speaking either protocol; `frame(payload)` is what goes on the wire."""

    def __init__(self, args: argparse.Namespace, me: str | None = None, peer: str | None = None) -> None:
        self.args = args
        self.asgard = args.proto == "asgard"
        self.me = uuid.UUID(me or args.me or str(uuid.uuid4()))
        self.peer = uuid.UUID(peer or args.peer) if (peer or args.peer) else None
        self.ws: ClientConnection | None = None

    async def open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.args.token}"} if self.asgard else {}
        ws = await connect(self.args.url, additional_headers=headers, compression=None, max_size=MAX_SIZE)
        self.ws = ws
        if self.asgard:
            await ws.recv()  # WELCOME
            body = json.dumps(
                {
                    "device_id": str(self.me),
                    "network_id": self.args.network,
                    "name": "bench",
                    "world_type": "physical",
                }
            ).encode()
            await ws.send(HEADER.pack(1, REGISTER, 0, 1, self.me.bytes, bytes(16), len(body)) + body)
            answer = await ws.recv()
            if answer[1] != 0x04:
                raise SystemExit(f"REGISTER refused: {answer[48:]!r}")
        return ws

    def header_to(self, peer: uuid.UUID, length: int) -> bytes:
        return HEADER.pack(1, DIRECT, 0, 0, self.me.bytes, peer.bytes, length)

    def payload_of(self, message: bytes) -> bytes:
        return message[48:] if self.asgard else message


def percentile(values: list[float], p: float) -> float:
    k = min(len(values) - 1, max(0, round(p / 100.0 * len(values) + 0.5) - 1))
    return values[k]


def summary(samples: list[float]) -> dict[str, Any]:
    samples.sort()
    if not samples:
        return {"n": 0}
    return {
        "n": len(samples),
        "p50_us": percentile(samples, 50),
        "p90_us": percentile(samples, 90),
        "p99_us": percentile(samples, 99),
        "p999_us": percentile(samples, 99.9),
        "max_us": samples[-1],
    }


async def until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def pingpong(args: argparse.Namespace) -> dict[str, Any]:
    end = Endpoint(args)
    ws = await end.open()
    pad = b"x" * max(0, args.size - SEQ.size)
    header = end.header_to(end.peer, SEQ.size + len(pad)) if end.asgard and end.peer else b""
    samples: list[float] = []
    timeouts = 0
    stop_at = time.monotonic() + args.deadline
    for i in range(args.warmup + args.count):
        if time.monotonic() > stop_at:
            break
        message = header + SEQ.pack(i) + pad
        t0 = time.perf_counter_ns()
        await ws.send(message)
        try:
            while True:
                reply = await asyncio.wait_for(ws.recv(), 5.0)
                body = end.payload_of(reply)  # type: ignore[arg-type]
                if (not end.asgard or reply[1] == DIRECT) and SEQ.unpack_from(body)[0] == i:
                    break
        except TimeoutError:
            timeouts += 1
            continue
        t1 = time.perf_counter_ns()
        if i >= args.warmup:
            samples.append((t1 - t0) / 1000.0)
    await ws.close()
    return summary(samples) | {"timeouts": timeouts}


async def echo(args: argparse.Namespace) -> dict[str, Any]:
    end = Endpoint(args)
    ws = await end.open()
    back = end.header_to(end.peer, args.size) if end.asgard and end.peer else b""
    print("READY", flush=True)

    async def pump() -> None:
        async for message in ws:
            if end.asgard:
                if message[1] == DIRECT:
                    await ws.send(back + message[48:])  # type: ignore[operator]
            else:
                await ws.send(message)

    task = asyncio.create_task(pump())
    await until_stdin_closes()
    task.cancel()
    await ws.close()
    return {}


async def publish(args: argparse.Namespace) -> dict[str, Any]:
    end = Endpoint(args)
    ws = await end.open()
    pad = b"x" * max(0, args.size - SEQ.size)
    header = end.header_to(end.peer, SEQ.size + len(pad)) if end.asgard and end.peer else b""
    refused = 0

    async def drain_replies() -> None:  # NACKs (a full receiver) must not stall this connection
        nonlocal refused
        async for _ in ws:
            refused += 1

    reader = asyncio.create_task(drain_replies())
    t0 = time.monotonic_ns()
    for i in range(args.count):
        await ws.send(header + SEQ.pack(i) + pad)
    t1 = time.monotonic_ns()
    await asyncio.sleep(0.5)
    reader.cancel()
    await ws.close()
    return {"sent": args.count, "pub_t0_ns": t0, "pub_t1_ns": t1, "refused": refused}


async def subscribe(args: argparse.Namespace) -> dict[str, Any]:
    end = Endpoint(args)
    ws = await end.open()
    print("READY", flush=True)
    first = last = 0
    n = bad = 0
    stop_at = time.monotonic() + args.deadline
    while n < args.count and time.monotonic() < stop_at:
        try:
            message = await asyncio.wait_for(ws.recv(), args.idle_timeout if n else args.deadline)
        except TimeoutError:
            break
        now = time.monotonic_ns()
        first = first or now
        last = now
        if len(end.payload_of(message)) != args.size:  # type: ignore[arg-type]
            bad += 1
        n += 1
    await ws.close()
    return {"received": n, "bad_size": bad, "first_ns": first, "last_ns": last}


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open many connections (Asgard: each a registered device) and hold them."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sockets: list[ClientConnection] = []
    semaphore = asyncio.Semaphore(64)

    async def one() -> None:
        async with semaphore:
            end = Endpoint(args, me=str(uuid.uuid4()))
            sockets.append(await end.open())

    await asyncio.gather(*(one() for _ in range(args.connections)))
    print("READY", flush=True)
    await until_stdin_closes()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {"connections": len(sockets)}


async def slow(args: argparse.Namespace) -> dict[str, Any]:
    end = Endpoint(args)
    ws = await end.open()
    ws.transport.pause_reading()  # type: ignore[attr-defined]  # never read again: a stuck consumer
    print("READY", flush=True)
    await until_stdin_closes()
    ws.transport.abort()  # type: ignore[attr-defined]
    return {}


async def flood(args: argparse.Namespace) -> dict[str, Any]:
    """Stream to `--peer` as fast as the relay takes it.

    Anchor: `await ws.send` (the library waits when the socket buffer is full: TCP backpressure,
    which the anchor's `await other.send()` propagates from the stuck consumer). Asgard: the
    relay never blocks a sender; it answers NACK resource-exhausted when the consumer's outbox is
    full, and a well-behaved sender backs off 50 ms on that answer (64 frames in flight at most).
    """
    end = Endpoint(args)
    ws = await end.open()
    payload = b"f" * args.size
    sent = refused = 0
    window = asyncio.Semaphore(64)
    backoff_until = 0.0

    async def read_answers() -> None:
        nonlocal refused, backoff_until
        async for message in ws:
            if end.asgard and message[1] in (0x06, 0x07):  # ACK, NACK
                window.release()
                if message[1] == 0x07:
                    refused += 1
                    backoff_until = time.monotonic() + 0.05

    async def send_forever() -> None:
        nonlocal sent
        while True:
            if end.asgard:
                await window.acquire()
                pause = backoff_until - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                frame = HEADER.pack(1, DIRECT, 0x0001, sent, end.me.bytes, end.peer.bytes, len(payload))  # type: ignore[union-attr]
                await ws.send(frame + payload)
            else:
                await ws.send(payload)
            sent += 1

    tasks = [asyncio.create_task(read_answers()), asyncio.create_task(send_forever())]
    print("READY", flush=True)
    await until_stdin_closes()
    for task in tasks:
        task.cancel()
    ws.transport.abort()  # type: ignore[attr-defined]
    return {"sent": sent, "refused": refused}


def raw_connect(end: Endpoint) -> socket.socket:
    """A blocking socket after the upgrade (and, for Asgard, WELCOME and REGISTER)."""
    target = urlparse(end.args.url)
    sock = socket.create_connection((target.hostname, target.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    auth = f"Authorization: Bearer {end.args.token}\r\n" if end.asgard else ""
    sock.sendall(
        f"GET {target.path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"upgrade refused: {head[:40]!r}")
    if end.asgard:
        read_frames(sock, bytearray(), 1)  # WELCOME
        body = json.dumps(
            {
                "device_id": str(end.me),
                "network_id": end.args.network,
                "name": "bench",
                "world_type": "physical",
            }
        ).encode()
        sock.sendall(masked(HEADER.pack(1, REGISTER, 0, 1, end.me.bytes, bytes(16), len(body)) + body))
        read_frames(sock, bytearray(), 1)  # REGISTERED
    return sock


def masked(message: bytes) -> bytes:
    """A client frame with an all-zero mask (the payload stays as it is)."""
    n = len(message)
    head = bytes((0x82, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x82, 0x80 | 126, n)
    return head + bytes(4) + message


def read_frames(sock: socket.socket, buf: bytearray, count: int) -> int:
    """Read until `count` whole server frames have arrived; returns how many were read."""
    got = 0
    while got < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
        pos = 0
        while len(buf) - pos >= 2:
            n = buf[pos + 1] & 0x7F
            start = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if len(buf) - pos < start:
                break
            if n == 126:
                n = struct.unpack_from("!H", buf, pos + 2)[0]
            elif n == 127:
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
            if len(buf) - pos < start + n:
                break
            pos += start + n
            got += 1
        del buf[:pos]
    return got


async def rawpub(args: argparse.Namespace) -> dict[str, Any]:
    end = Endpoint(args)
    sock = raw_connect(end)
    pad = b"x" * max(0, args.size - SEQ.size)
    header = end.header_to(end.peer, SEQ.size + len(pad)) if end.asgard and end.peer else b""
    frames = [masked(header + SEQ.pack(i) + pad) for i in range(args.count)]
    t0 = time.monotonic_ns()
    for i in range(0, len(frames), 256):
        sock.sendall(b"".join(frames[i : i + 256]))
    t1 = time.monotonic_ns()
    time.sleep(0.5)
    sock.close()
    return {"sent": args.count, "pub_t0_ns": t0, "pub_t1_ns": t1, "refused": 0}


async def rawsub(args: argparse.Namespace) -> dict[str, Any]:
    end = Endpoint(args)
    sock = raw_connect(end)
    print("READY", flush=True)
    sock.settimeout(args.idle_timeout)
    buf = bytearray()
    first = last = 0
    n = 0
    try:
        while n < args.count:
            got = read_frames(sock, buf, 1)
            if not got:
                break
            now = time.monotonic_ns()
            first = first or now
            last = now
            n += got
    except TimeoutError:
        pass
    sock.close()
    return {"received": n, "bad_size": 0, "first_ns": first, "last_ns": last}


ROLES = {
    "pingpong": pingpong,
    "echo": echo,
    "publish": publish,
    "subscribe": subscribe,
    "idle": idle,
    "slow": slow,
    "flood": flood,
    "rawpub": rawpub,
    "rawsub": rawsub,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--proto", choices=["asgard", "anchor"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--network", default="")
    parser.add_argument("--me", default="")
    parser.add_argument("--peer", default="")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--idle-timeout", type=float, default=2.0)
    args = parser.parse_args()
    if not args.url.startswith(("ws://127.", "ws://[::1]", "ws://localhost")):
        raise SystemExit("loopback targets only")
    result = uvloop.run(ROLES[args.role](args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
