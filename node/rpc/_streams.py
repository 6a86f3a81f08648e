"""Island-side pumps between a grpclib stream and a bridge `StreamCall`, written pipelined.

Messages are never awaited one by one across the bridge: the outbound pump writes whatever Trio
has sent as soon as it arrives (credits flow back in batches), and the inbound pump, a task of its
own, passes client messages on while the outbound pump writes (spike-stack.md §2.4: an
await-per-message handler is 3-5 times slower).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from node.rpc._bridge import StreamCall
from node.rpc._gate import Stream
from node.rpc._pipes import EndOfPipe

Msg = TypeVar("Msg")


async def request(stream: Stream) -> Any:
    """The single request message of a unary-request call."""
    message = await stream.recv_message()
    if message is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "the request message is missing")
    return message


async def pump_out(stream: Stream, call: StreamCall[Any, Any], convert: Callable[[Any], Any]) -> None:
    """Write what the Trio side sends until it returns; raise what it raised."""
    try:
        while not isinstance(item := await call.next(), EndOfPipe):
            await stream.send_message(convert(item))
            call.ack()
        _raise_error(item)
        await call.result()
    except BaseException:
        call.cancel()
        raise


def _raise_error(end: EndOfPipe) -> None:
    if end.error is not None:
        raise end.error


async def pump_in(stream: Stream, call: StreamCall[Any, Any], convert: Callable[[Any], Any]) -> None:
    """Pass client messages to Trio until the client stops sending or Trio stops reading."""
    try:
        async for message in stream:
            if not await call.put(convert(message)):
                return
    except GRPCError as exc:  # oversize or malformed message: the call fails with it
        call.abort(exc)
        return
    except Exception as exc:
        call.abort(exc)
        return
    call.close_input()


async def bidirectional(
    stream: Stream,
    call: StreamCall[Any, Any],
    inbound: Callable[[Any], Any],
    outbound: Callable[[Any], Any],
) -> None:
    """Run both pumps; the call ends when the Trio side returns (or fails)."""
    reader = asyncio.get_running_loop().create_task(pump_in(stream, call, inbound))
    try:
        await pump_out(stream, call, outbound)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
