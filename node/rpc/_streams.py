"""Island-side pumps between a grpclib stream and a bridge `StreamCall`, written pipelined.

Messages are never awaited one by one across the bridge: the outbound pump writes whatever Trio
has sent as soon as it arrives (credits flow back in batches), and the inbound pump, a task of its
own, passes client messages on while the outbound pump writes (spike-stack.md §2.4: an
await-per-message handler is 3-5 times slower).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from node.rpc._bridge import StreamCall
from node.rpc._gate import Stream
from node.rpc._pipes import EndOfPipe

Msg = TypeVar("Msg")
_PREFIX = struct.Struct(">BI")  # gRPC over HTTP/2: compressed flag, message length
_MAX_BATCH = 64


async def request(stream: Stream) -> Any:
    """The single request message of a unary-request call."""
    message = await stream.recv_message()
    if message is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "the request message is missing")
    return message


async def pump_out(stream: Stream, call: StreamCall[Any, Any], convert: Callable[[Any], Any]) -> None:
    """Write what the Trio side sends until it returns; raise what it raised.

    Messages that are already waiting go out together in one HTTP/2 write.
    """
    try:
        while not isinstance(item := await call.next(), EndOfPipe):
            batch = [convert(item)]
            while len(batch) < _MAX_BATCH and (more := call.next_nowait()) is not None:
                batch.append(convert(more))
            await _send_messages(stream, batch)
            call.ack(len(batch))
        _raise_error(item)
        await call.result()
    except BaseException:
        call.cancel()
        raise


async def _send_messages(stream: Stream, messages: list[Any]) -> None:
    """Send messages as one DATA write (gRPC Length-Prefixed-Messages back to back)."""
    if len(messages) == 1:
        await stream.send_message(messages[0])
        return
    if not stream._send_initial_metadata_done:
        await stream.send_initial_metadata()
    # grpclib 0.4 internals: the codec, the HTTP/2 stream and the message counters.
    encode = stream._codec.encode
    parts = []
    for message in messages:
        body = encode(message, stream._send_type)
        parts.append(_PREFIX.pack(0, len(body)))
        parts.append(body)
    await stream._stream.send_data(b"".join(parts))
    stream._send_message_done = True
    stream._messages_sent += len(messages)


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
