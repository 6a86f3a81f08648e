"""A minimal HTTP/1.1 keep-alive load client on raw blocking sockets (run as its own process).

Why raw sockets: the figure should be the server's. httpx adds ~0.2 ms of client-side Python per
request (spike §3: GET p50 0.75-0.90 ms with httpx vs 0.57-0.67 ms with a raw socket), which would
swamp the very latency this benchmark exists to check. This client sends pre-built request bytes and
reads exactly the response's Content-Length; it reconnects when the server closes (hypercorn closes
a keep-alive connection after 1000 requests) and counts the reconnects.

    python -m bench.api.client --url http://127.0.0.1:PORT --token asg_... --kind get --count 10000

Prints one JSON object: latencies in µs, elapsed seconds, errors, reconnects.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from bench.api.seed import NETWORK_ID, device_id

MAX_HEADER_BYTES = 65536


class Connection:
    """One keep-alive connection; `request` returns (status, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.reconnects = -1

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = sock, bytearray()
        self.reconnects += 1
        return sock

    def request(self, data: bytes) -> tuple[int, bytes]:
        sock = self.sock or self._connect()
        sock.sendall(data)
        end = self._fill_until(b"\r\n\r\n")
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(head[0].split(" ", 2)[1])
        length, close = 0, False
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        while len(self.buf) < length:
            self._recv()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        if close:
            self.close()
        return status, body

    def _fill_until(self, marker: bytes) -> int:
        while (end := self.buf.find(marker)) < 0:
            if len(self.buf) > MAX_HEADER_BYTES:
                raise RuntimeError("response header too large")
            self._recv()
        return end

    def _recv(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection mid-response")
        self.buf += data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Requests:
    """Pre-built request bytes for one kind of request."""

    def __init__(self, kind: str, netloc: str, token: str, devices: int, seed: int) -> None:
        self.kind = kind
        self.head = f"Host: {netloc}\r\nAuthorization: Bearer {token}\r\n"
        self.devices = devices
        self.random = random.Random(seed)
        self.expected = 201 if kind == "post" else 200

    def next(self) -> bytes:
        if self.kind == "healthz":
            return b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        if self.kind == "get":
            target = device_id(self.random.randrange(self.devices))
            return f"GET /api/v1/devices/{target} HTTP/1.1\r\n{self.head}\r\n".encode()
        body = json.dumps(
            {
                "device_id": str(uuid.uuid4()),
                "network_id": NETWORK_ID,
                "world_type": "virtual",
                "name": "bench",
                "capabilities": ["light.on_off"],
                "hardware_spec": {"cpu": "arm64"},
            }
        ).encode()
        return (
            f"POST /api/v1/devices HTTP/1.1\r\n{self.head}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body


def worker(conn: Connection, requests: Requests, count: int, deadline: float, out: dict[str, Any]) -> None:
    latencies: list[float] = []
    errors = 0
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        data = requests.next()
        started = time.perf_counter_ns()
        status, _ = conn.request(data)
        latencies.append((time.perf_counter_ns() - started) / 1000)
        if status != requests.expected:
            errors += 1
    conn.close()
    out["latencies"] += latencies
    out["errors"] += errors
    out["reconnects"] += max(0, conn.reconnects)


def run(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    out: dict[str, Any] = {"latencies": [], "errors": 0, "reconnects": 0}
    warm = Connection(host, port)
    warm_requests = Requests(args.kind, url.netloc, args.token, args.devices, args.seed + 1)
    worker(warm, warm_requests, args.warmup, time.monotonic() + args.max_seconds, {
        "latencies": [], "errors": 0, "reconnects": 0,
    })  # fmt: skip
    per_conn = args.count // args.conns
    deadline = time.monotonic() + args.max_seconds
    threads = []
    started = time.perf_counter()
    for i in range(args.conns):
        requests = Requests(args.kind, url.netloc, args.token, args.devices, args.seed + 100 + i)
        t = threading.Thread(target=worker, args=(Connection(host, port), requests, per_conn, deadline, out))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    out["elapsed_s"] = time.perf_counter() - started
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--kind", choices=["healthz", "get", "post"], required=True)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--devices", type=int, default=100_000, help="seeded devices to pick GET ids from")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=60.0)
    args = p.parse_args()
    json.dump(run(args), sys.stdout)


if __name__ == "__main__":
    main()
