"""The island/Trio bridge without gRPC: calls, deadlines, cancellation, bounds, pipes, batching."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from node.errors import NotFound, ResourceExhausted, Unavailable
from node.rpc import DeadlineExceeded, Island, open_island
from node.rpc._pipes import EndOfPipe, ToIsland, ToTrio


async def _double(x: int) -> int:
    await trio.lowlevel.checkpoint()
    return 2 * x


async def _missing(_: int) -> int:
    await trio.lowlevel.checkpoint()
    raise NotFound("no such thing")


async def test_calls_run_in_trio_and_return_or_raise() -> None:
    async def island_side(island: Island) -> tuple[int, str]:
        value = await island.bridge.call(_double, 21, timeout_s=5)
        try:
            await island.bridge.call(_missing, 1, timeout_s=5)
        except NotFound as exc:
            return value, exc.detail
        raise AssertionError("expected NotFound")

    async with open_island() as island:
        assert await island.run(island_side, island) == (42, "no such thing")


def _plain_double(x: int) -> int:
    return 2 * x


def _plain_missing(_: int) -> int:
    raise NotFound("no such thing")


async def test_plain_functions_answer_inside_the_hand_over_without_a_task() -> None:
    tasks: list[trio.lowlevel.Task] = []

    def recording_double(x: int) -> int:
        tasks.append(trio.lowlevel.current_task())
        return _plain_double(x)

    async def island_side(island: Island) -> tuple[int, int, str]:
        value = await island.bridge.call(recording_double, 21, timeout_s=5)
        untimed = await island.bridge.call(recording_double, 4, timeout_s=None)
        try:
            await island.bridge.call(_plain_missing, 1, timeout_s=5)
        except NotFound as exc:
            return value, untimed, exc.detail
        raise AssertionError("expected NotFound")

    async with open_island() as island:
        assert await island.run(island_side, island) == (42, 8, "no such thing")
        assert island.statistics()["in_flight"] == 0
    # Both ran in Trio's run_sync_soon task, not in a task of their own.
    assert len(tasks) == 2
    assert tasks[0] is tasks[1]


async def test_a_plain_function_may_return_an_awaitable_that_keeps_the_deadline() -> None:
    cancelled = trio.Event()

    async def sleeper() -> int:
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            cancelled.set()
            raise
        return 1

    def maybe_wait(wait: bool) -> int | Awaitable[int]:
        return sleeper() if wait else 7

    async def island_side(island: Island) -> tuple[int, str]:
        now = await island.bridge.call(maybe_wait, False, timeout_s=5)
        try:
            await island.bridge.call(maybe_wait, True, timeout_s=0.05)
        except DeadlineExceeded:
            return now, "deadline"
        return now, "returned"

    async with open_island() as island:
        assert await island.run(island_side, island) == (7, "deadline")
        assert cancelled.is_set()


async def test_a_call_whose_deadline_passed_before_it_reached_trio_is_not_run() -> None:
    ran: list[int] = []

    def record(x: int) -> int:
        ran.append(x)
        return x

    async def island_side(island: Island) -> str:
        try:
            await island.bridge.call(_checkpoint_then, record, 1, timeout_s=0)
        except DeadlineExceeded:
            return "deadline"
        return "returned"

    async with open_island() as island:
        assert await island.run(island_side, island) == "deadline"
    assert ran == []


async def _checkpoint_then(fn: Callable[[int], int], x: int) -> int:
    await trio.lowlevel.checkpoint()
    return fn(x)


async def test_a_trio_call_past_its_deadline_is_cancelled() -> None:
    cancelled = trio.Event()

    async def sleeper() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    async def island_side(island: Island) -> str:
        try:
            await island.bridge.call(sleeper, timeout_s=0.05)
        except DeadlineExceeded:
            return "deadline"
        return "returned"

    async with open_island() as island:
        assert await island.run(island_side, island) == "deadline"
        assert cancelled.is_set()


async def test_cancelling_the_island_side_cancels_the_trio_task() -> None:
    started, cancelled = trio.Event(), trio.Event()

    async def sleeper() -> None:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    async def island_side(island: Island) -> None:
        await island.bridge.call(sleeper, timeout_s=None)

    async with open_island() as island, trio.open_nursery() as nursery:
        nursery.start_soon(island.run, island_side, island)
        with trio.fail_after(5):
            await started.wait()
        nursery.cancel_scope.cancel()  # cancels the island job, which cancels its Trio call
    with trio.fail_after(5):
        await cancelled.wait()


async def test_more_calls_than_the_bound_are_refused() -> None:
    release = trio.Event()

    async def held() -> int:
        await release.wait()
        return 1

    async def island_side(island: Island) -> list[Any]:
        calls = [asyncio.ensure_future(island.bridge.call(held, timeout_s=5)) for _ in range(3)]
        await asyncio.sleep(0)
        results = await asyncio.gather(*calls, return_exceptions=True)
        return results

    async with open_island(max_in_flight=2) as island, trio.open_nursery() as nursery:
        nursery.start_soon(_release_when_blocked, release)
        results = await island.run(island_side, island)
    assert results[:2] == [1, 1]
    assert isinstance(results[2], ResourceExhausted)


async def _release_when_blocked(release: trio.Event) -> None:
    await trio.testing.wait_all_tasks_blocked()
    release.set()


async def test_calls_are_handed_over_in_batches() -> None:
    async def island_side(island: Island) -> list[int]:
        return await asyncio.gather(*(island.bridge.call(_double, i, timeout_s=5) for i in range(400)))

    async with open_island() as island:
        before = island.statistics()
        assert await island.run(island_side, island) == [2 * i for i in range(400)]
        after = island.statistics()
    assert after["to_trio_jobs"] - before["to_trio_jobs"] >= 400
    assert after["to_trio_batches"] - before["to_trio_batches"] < 40
    assert after["to_island_batches"] - before["to_island_batches"] < 100


async def test_trio_to_island_pipe_applies_backpressure() -> None:
    async with open_island(window=4) as island:
        bridge = island.bridge
        pipe: ToIsland[int] = ToIsland(bridge, bridge.loop, bridge.window)
        sent = 0

        async def produce() -> None:
            nonlocal sent
            for i in range(10):
                await pipe.sender.send(i)
                sent += 1
            await pipe.sender.aclose()

        async def consume(count: int) -> list[int]:
            items = []
            for _ in range(count):
                item = await pipe.get()
                assert not isinstance(item, EndOfPipe)
                items.append(item)
                pipe.ack()
            return items

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == 4  # the window is full; nothing is dropped, the sender waits
            assert await island.run(consume, 2) == [0, 1]
            assert await island.run(consume, 8) == list(range(2, 10))
        end = await island.run(pipe.get)
        assert isinstance(end, EndOfPipe)
        assert end.error is None


async def test_island_to_trio_pipe_applies_backpressure_and_carries_errors() -> None:
    async with open_island(window=4) as island:
        bridge = island.bridge
        pipe: ToTrio[int] = ToTrio(bridge, bridge.loop, bridge.window)
        put = 0

        async def produce() -> None:
            nonlocal put
            for i in range(10):
                assert await pipe.put(i)
                put += 1
            pipe.close(Unavailable("the far side broke"))

        job = bridge.start_island_job(produce)
        await island.run(asyncio.sleep, 0)
        assert put == 4
        received = [await pipe.receiver.receive() for _ in range(10)]
        assert received == list(range(10))
        with pytest.raises(Unavailable, match="far side broke"):
            await pipe.receiver.receive()
        await job.done.wait()


async def test_a_trio_reader_cancelled_while_waiting_loses_nothing() -> None:
    async with open_island(window=4) as island:
        bridge = island.bridge
        pipe: ToTrio[int] = ToTrio(bridge, bridge.loop, bridge.window)
        with trio.move_on_after(0.05) as scope:
            await pipe.receiver.receive()
        assert scope.cancelled_caught

        async def second_reader_is_refused() -> None:
            with pytest.raises(trio.BusyResourceError):
                await pipe.receiver.receive()

        received: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_receive_into, pipe, received)
            await trio.testing.wait_all_tasks_blocked()
            await second_reader_is_refused()
            assert await island.run(pipe.put, 7)
        assert received == [7]


async def _receive_into(pipe: ToTrio[int], received: list[int]) -> None:
    received.append(await pipe.receiver.receive())


async def test_a_closed_trio_reader_stops_the_island_writer() -> None:
    async with open_island(window=2) as island:
        bridge = island.bridge
        pipe: ToTrio[int] = ToTrio(bridge, bridge.loop, bridge.window)

        async def produce() -> int:
            count = 0
            while await pipe.put(count):
                count += 1
            return count

        job = bridge.start_island_job(produce)
        assert await pipe.receiver.receive() == 0
        await pipe.receiver.aclose()
        with trio.fail_after(5):
            await job.done.wait()
        assert job.result is not None
        assert job.result.unwrap() <= 3


async def test_a_cancelled_island_job_is_cancelled_on_the_island() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async with open_island() as island:
        with trio.move_on_after(0.05) as scope:
            await island.run(forever)
        assert scope.cancelled_caught
        assert await island.run(_other_island_tasks) == 1  # the island's own main task


async def _other_island_tasks() -> int:
    return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])


async def test_calls_still_running_at_close_end_with_unavailable() -> None:
    started = trio.Event()

    async def running() -> None:
        started.set()
        await trio.sleep_forever()

    async def island_side(island: Island) -> None:
        await island.bridge.call(running, timeout_s=None)

    async with open_island() as island:
        job = island.bridge.start_island_job(island_side, island)
        with trio.fail_after(5):
            await started.wait()
    assert job.result is not None
    with pytest.raises(Unavailable):
        job.result.unwrap()
