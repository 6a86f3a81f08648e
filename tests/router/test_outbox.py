"""Outbox: limits in messages and bytes, slack for the node's own frames, one waiting writer."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from node.router import Outbox


def test_offer_respects_message_and_byte_limits() -> None:
    box = Outbox(3, 100)
    assert box.offer(b"a" * 40)
    assert box.offer(b"b" * 40)
    assert not box.offer(b"c" * 30)  # 110 bytes would exceed 100
    assert box.offer(b"c" * 20)
    assert not box.offer(b"")  # 3 messages already
    assert len(box) == 3
    assert box.bytes == 100
    assert box.room() == (0, 0)


def test_control_frames_use_the_slack_then_refuse() -> None:
    box = Outbox(2, 10, control_slack=2)
    assert box.offer(b"12345")
    assert box.offer(b"12345")
    assert not box.offer(b"x")
    assert box.put_control(b"ack-1")
    assert box.put_control(b"ack-2")
    assert not box.put_control(b"ack-3")  # a session that does not read at all


def test_closed_outbox_refuses_data_but_takes_last_answers() -> None:
    box = Outbox(10, 1000)
    box.close()
    assert not box.offer(b"x")
    assert box.put_control(b"nack")


async def test_take_returns_everything_in_order_and_resets_counters() -> None:
    box = Outbox(10, 1000)
    frames = [b"one", b"two", b"three"]
    for f in frames:
        box.offer(f)
    taken = await box.take()
    assert taken == frames
    assert all(a is b for a, b in zip(taken, frames, strict=True))  # the same objects
    assert len(box) == 0
    assert box.bytes == 0


async def test_take_waits_until_a_frame_arrives() -> None:
    box = Outbox(10, 1000)
    got: list[list[bytes]] = []

    async def writer() -> None:
        got.append(await box.take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        box.offer(b"late")
    assert got == [[b"late"]]


async def test_wake_and_close_return_an_empty_batch() -> None:
    box = Outbox(10, 1000)
    results: list[list[bytes]] = []

    async def writer() -> None:
        results.append(await box.take())
        results.append(await box.take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        box.wake()
        await trio.testing.wait_all_tasks_blocked()
        box.close()
    assert results == [[], []]
    assert box.closed


async def test_take_is_cancellable_and_leaves_no_waiter() -> None:
    box = Outbox(10, 1000)
    with trio.move_on_after(0.01):
        await box.take()
    assert box.offer(b"after")  # no stale waiter to reschedule
    assert await box.take() == [b"after"]


@pytest.mark.parametrize("size", [0, 1, 99])
def test_room_reports_what_still_fits(size: int) -> None:
    box = Outbox(5, 100)
    box.offer(b"x" * size)
    assert box.room() == (4, 100 - size)


async def test_a_closed_outbox_never_makes_the_writer_wait() -> None:
    box = Outbox(10, 1000)
    box.close()
    box.put_control(b"last words")  # after the close woke the writer
    assert await box.take() == [b"last words"]
    with trio.fail_after(1):
        assert await box.take() == []
