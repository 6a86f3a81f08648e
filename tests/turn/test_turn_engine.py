"""The relay thread's engine driven directly (no thread): the bounded hand-over of STUN messages
to Trio and socket ownership."""

from __future__ import annotations

import os
import select
import socket
from typing import Any

import pytest

from node.turn import _engine
from node.turn._engine import RelayEngine
from node.turn._transports import UdpListener
from node.turn.state import TurnState
from wire.stun import Message, MessageClass, Method, encode_message


def test_hand_over_to_trio_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_engine, "MAX_CONTROL_BACKLOG", 5)
    posted: list[list[Any]] = []

    def post(batch: list[Any]) -> None:
        posted.append(batch)
        engine.stop()

    engine = RelayEngine(TurnState(), protocol=None, post_control=post)  # type: ignore[arg-type]
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        listener = UdpListener(server)
        engine.add_listener(listener, 0x4F)
        request = encode_message(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)))
        for _ in range(8):
            client.sendto(request, listener.address)
        handler = engine._handlers[server.fileno()]
        handler(select.EPOLLIN)
        assert len(engine._control) == 5 and engine.drops["control-overload"] == 3
        os.eventfd_write(engine._wake_fd, 1)
        engine.run()  # one pass: hands the batch over (and the test's post() stops it)
        engine.close()
    assert [len(batch) for batch in posted] == [5]
    engine.done(5)
    assert engine.processed == 5


def test_the_engine_closes_the_relay_sockets_it_owns() -> None:
    engine = RelayEngine(TurnState(), protocol=None, post_control=lambda batch: None)  # type: ignore[arg-type]
    kept = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    removed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    engine._owned = {kept.fileno(): kept, removed.fileno(): removed}
    engine.remove(removed)
    engine._on_wake()  # what the thread does when woken
    assert removed.fileno() == -1 and kept.fileno() != -1
    engine.stop()
    engine.run()  # returns at once
    assert kept.fileno() != -1  # the thread never closes what it may still be reading
    engine.close()
    assert kept.fileno() == -1
    late = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    engine.remove(late)  # after close: closed at once, nothing written to a stale eventfd
    engine.stop()
    assert late.fileno() == -1
