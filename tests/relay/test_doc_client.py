"""A second client, written only from docs/protocol.md with the `websockets` library.

It imports nothing from the project's protocol code: frames are packed with `struct` from the
layout in §2.1, control payloads are JSON (§3), ACK/NACK payloads binary (§4).
"""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

import trio
from websockets.sync.client import ClientConnection, connect

from tests.relay.helpers import RelayEnv
from tests.relay.test_durable import offline

HEADER = struct.Struct("!BBHQ16s16sI")  # version, type, flags, message id, source, destination, length
HELLO, WELCOME, REGISTER, REGISTERED, ACK, NACK, DELIVERED, DIRECT = 1, 2, 3, 4, 6, 7, 0x0D, 0x10
ACK_REQUESTED, DURABLE, REDELIVERED = 0x1, 0x2, 0x4
TIMEOUT_S = 10


class DocClient:
    def __init__(self, ws: ClientConnection, device: uuid.UUID) -> None:
        self.ws, self.device, self.next_id = ws, device, 100

    def send(
        self,
        ftype: int,
        payload: bytes = b"",
        *,
        flags: int = 0,
        dest: bytes = bytes(16),
        mid: int | None = None,
    ) -> int:
        if mid is None:
            self.next_id += 1
            mid = self.next_id
        self.ws.send(HEADER.pack(1, ftype, flags, mid, self.device.bytes, dest, len(payload)) + payload)
        return mid

    def send_json(self, ftype: int, body: dict[str, Any], **kw: Any) -> int:
        return self.send(ftype, json.dumps(body).encode(), **kw)

    def recv(self) -> tuple[int, int, int, bytes, bytes, bytes]:
        data = self.ws.recv(timeout=TIMEOUT_S)
        assert isinstance(data, bytes)
        version, ftype, flags, mid, src, dst, length = HEADER.unpack_from(data)
        assert version == 1 and length == len(data) - HEADER.size
        return ftype, flags, mid, src, dst, data[HEADER.size :]

    def register(self, network: uuid.UUID) -> dict[str, Any]:
        mid = self.send_json(
            REGISTER,
            {
                "device_id": str(self.device),
                "network_id": str(network),
                "name": "doc",
                "world_type": "physical",
            },
        )
        ftype, _, got_mid, _, _, payload = self.recv()
        assert (ftype, got_mid) == (REGISTERED, mid)
        return dict(json.loads(payload))


def scenario(url: str, a: tuple[uuid.UUID, str], b: tuple[uuid.UUID, str], network: uuid.UUID) -> None:
    with connect(url, additional_headers={"Authorization": f"Bearer {a[1]}"}, compression=None) as wa:
        ca = DocClient(wa, a[0])
        ftype, _, mid, _, _, payload = ca.recv()
        assert (ftype, mid, json.loads(payload)["device_id"]) == (WELCOME, 0, str(a[0]))
        assert ca.register(network)["replaced_session"] is False
        mid = ca.send(DIRECT, b"while you were away", flags=ACK_REQUESTED | DURABLE, dest=b[0].bytes)
        ftype, _, got, _, dst, payload = ca.recv()
        assert (ftype, got, dst) == (ACK, mid, a[0].bytes)
        status, _reserved, recipients = struct.unpack("!BBH", payload)
        assert (status, recipients) == (2, 1)  # queued: B is offline
        with connect(url, compression=None) as wb:  # no header: HELLO first (§5.1)
            cb = DocClient(wb, b[0])
            hello = cb.send_json(HELLO, {"token": b[1], "client": "doc-client/1"})
            ftype, _, got, *_ = cb.recv()
            assert (ftype, got) == (WELCOME, hello)
            assert cb.register(network)["queued"] == 1
            ftype, flags, got, src, _, payload = cb.recv()
            assert (ftype, got, src, payload) == (DIRECT, mid, a[0].bytes, b"while you were away")
            assert flags & REDELIVERED and flags & DURABLE
            cb.send(DELIVERED, mid=got, dest=src)
            back = cb.send(DIRECT, b"got it", flags=ACK_REQUESTED, dest=a[0].bytes)
            ftype, _, got, *_ = cb.recv()
            assert (ftype, got) == (ACK, back)
            ftype, _, got, src, _, payload = ca.recv()
            assert (ftype, src, payload) == (DIRECT, b[0].bytes, b"got it")
            bad = cb.send(DIRECT, b"?", flags=ACK_REQUESTED, dest=uuid.uuid4().bytes)
            ftype, _, got, _, _, payload = cb.recv()
            assert (ftype, got, struct.unpack_from("!H", payload)[0]) == (NACK, bad, 1)  # unknown-device


async def test_a_client_written_from_the_protocol_document(env: RelayEnv) -> None:
    a, b = await env.device(), await offline(env)  # B is registered, not connected
    with trio.fail_after(TIMEOUT_S * 3):
        await trio.to_thread.run_sync(
            scenario, env.url, (a.device_id, a.token), (b.device_id, b.token), env.network_id
        )
