"""Neighbour-service clients against in-process fake servers implementing the protos."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import grpc
import pytest
import trio

from node.errors import InvalidInput, NotFound, Unauthenticated, Unavailable
from node.rpc import Principal, RpcServer, RpcSettings, open_island
from node.rpc.clients import (
    HeimdallAuthenticator,
    HeimdallNotConfigured,
    OdinRequest,
    open_neighbours,
)
from node.rpc.settings import HeimdallSettings, NeighbourSettings
from node.rpc.testing import MemoryBackend, StaticAuthenticator
from protos.gen.asgard import v1 as pb
from tests.rpc.conftest import TOKENS, Client
from tests.rpc.fakes import (
    FakeBifrost,
    FakeHeimdall,
    FakeOdin,
    Signal,
    in_an_hour,
    serve_fakes,
    valid_identity,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(**sections: object) -> RpcSettings:
    return RpcSettings(host="127.0.0.1", port=0, **sections)  # type: ignore[arg-type]


async def test_heimdall_is_asked_only_about_tokens_the_node_does_not_know() -> None:
    heimdall = FakeHeimdall(tokens={"hd_svc": valid_identity("svc-7", expires=in_an_hour())})
    async with serve_fakes(heimdall) as address, open_island() as island:
        settings = _settings(heimdall=HeimdallSettings(address=address))
        async with open_neighbours(island, settings) as neighbours:
            auth = HeimdallAuthenticator(StaticAuthenticator(TOKENS), neighbours.heimdall, settings.heimdall)
            assert await auth.authenticate("asg_admin") == TOKENS["asg_admin"]
            assert heimdall.calls == 0
            principal = await auth.authenticate("hd_svc")
            assert principal == Principal("svc-7", "service", (), None)
            await auth.authenticate("hd_svc")
            assert heimdall.calls == 1  # the answer was cached
            for _ in range(2):
                with pytest.raises(Unauthenticated, match="invalid token"):
                    await auth.authenticate("hd_unknown")
            assert heimdall.calls == 2  # the refusal was cached too


async def test_a_locally_refused_token_is_not_passed_to_heimdall() -> None:
    class Revoking:
        async def authenticate(self, token: str) -> Principal:
            await trio.lowlevel.checkpoint()
            raise Unauthenticated("token revoked", reason="revoked")

    heimdall = FakeHeimdall(tokens={"asg_revoked": valid_identity("x")})
    async with serve_fakes(heimdall) as address, open_island() as island:
        settings = _settings(heimdall=HeimdallSettings(address=address))
        async with open_neighbours(island, settings) as neighbours:
            auth = HeimdallAuthenticator(Revoking(), neighbours.heimdall, settings.heimdall)
            with pytest.raises(Unauthenticated, match="revoked"):
                await auth.authenticate("asg_revoked")
    assert heimdall.calls == 0


async def test_an_unreachable_heimdall_denies_and_caches_nothing() -> None:
    settings = HeimdallSettings(address=f"127.0.0.1:{_free_port()}", timeout_s=1.0)
    async with open_island() as island, open_neighbours(island, _settings(heimdall=settings)) as neighbours:
        auth = HeimdallAuthenticator(StaticAuthenticator({}), neighbours.heimdall, settings)
        for attempt in (1, 2):
            with pytest.raises(Unauthenticated, match="Heimdall unavailable"):
                await auth.authenticate("hd_anything")
            assert auth.remote_checks == attempt


async def test_a_slow_heimdall_denies_within_its_timeout() -> None:
    heimdall = FakeHeimdall(tokens={"hd_svc": valid_identity("svc")}, delay_s=30)
    async with serve_fakes(heimdall) as address, open_island() as island:
        settings = HeimdallSettings(address=address, timeout_s=0.3)
        async with open_neighbours(island, _settings(heimdall=settings)) as neighbours:
            auth = HeimdallAuthenticator(StaticAuthenticator({}), neighbours.heimdall, settings)
            with trio.fail_after(5), pytest.raises(Unauthenticated, match="Heimdall unavailable"):
                await auth.authenticate("hd_svc")


async def test_heimdall_without_configuration_denies_unknown_tokens() -> None:
    auth = HeimdallAuthenticator(StaticAuthenticator({}), HeimdallNotConfigured(), HeimdallSettings())
    with pytest.raises(Unauthenticated):
        await auth.authenticate("hd_svc")
    with pytest.raises(Unavailable, match="not configured"):
        await HeimdallNotConfigured().device_identity("x")


async def test_device_identity_lookup() -> None:
    device = pb.DeviceIdentity(
        device_id="d-1", owner="alice", networks=["n"], public_key=b"\x30\x01", revoked=False
    )
    heimdall = FakeHeimdall(devices={"d-1": device})
    async with serve_fakes(heimdall) as address, open_island() as island:
        settings = _settings(heimdall=HeimdallSettings(address=address))
        async with open_neighbours(island, settings) as neighbours:
            found = await neighbours.heimdall.device_identity("d-1")
            assert (found.owner, found.networks, found.public_key) == ("alice", ("n",), b"\x30\x01")
            with pytest.raises(NotFound, match="Heimdall: no device d-2"):
                await neighbours.heimdall.device_identity("d-2")


async def test_grpc_calls_accept_a_token_only_heimdall_knows(stubs: SimpleNamespace) -> None:
    heimdall = FakeHeimdall(tokens={"hd_svc": valid_identity("svc-7")})
    async with serve_fakes(heimdall) as address, open_island() as island, trio.open_nursery() as nursery:
        settings = _settings(heimdall=HeimdallSettings(address=address))
        async with open_neighbours(island, settings) as neighbours:
            auth = HeimdallAuthenticator(StaticAuthenticator(TOKENS), neighbours.heimdall, settings.heimdall)
            server = RpcServer(settings, MemoryBackend(), auth, island=island)
            host, port = await nursery.start(server.serve)
            with grpc.insecure_channel(f"{host}:{port}") as channel:
                client = Client(channel, stubs)
                request = stubs.registry.ListDevicesRequest()
                reply = await client.call(
                    client.registry.ListDevices, request, metadata=(("authorization", "Bearer hd_svc"),)
                )
                assert list(reply.devices) == []
                error = await client.error(
                    client.registry.ListDevices, request, metadata=(("authorization", "Bearer hd_nope"),)
                )
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            nursery.cancel_scope.cancel()


async def test_odin_streams_the_answer_in_order() -> None:
    odin = FakeOdin(chunks=4)
    async with serve_fakes(odin) as address, open_island() as island:
        settings = _settings(odin=NeighbourSettings(address=address, token="asg_to_odin"))
        async with open_neighbours(island, settings) as neighbours:
            request = OdinRequest(
                kind="assistant.query", payload=b"what is the weather like", network_id="n-1"
            )
            async with neighbours.odin.forward(request) as chunks:
                received = [chunk async for chunk in chunks]
    assert b"".join(c.data for c in received) == b"what is the weather like"
    assert [c.final for c in received] == [False] * (len(received) - 1) + [True]
    assert odin.requests[0].network_id == "n-1"
    assert odin.requests[0].request_id == request.request_id


async def test_odin_long_answers_pass_the_window_in_order() -> None:
    odin = FakeOdin(chunks=2000)
    payload = bytes(range(256)) * 8
    async with serve_fakes(odin) as address, open_island(window=8) as island:
        settings = _settings(odin=NeighbourSettings(address=address))
        async with (
            open_neighbours(island, settings) as neighbours,
            neighbours.odin.forward(OdinRequest(kind="k", payload=payload)) as chunks,
        ):
            data = b"".join([chunk.data async for chunk in chunks])
    assert data == payload


async def test_odin_errors_and_defaults() -> None:
    odin = FakeOdin()
    async with serve_fakes(odin) as address, open_island() as island:
        settings = _settings(odin=NeighbourSettings(address=address))
        async with (
            open_neighbours(island, settings) as neighbours,
            neighbours.odin.forward(OdinRequest(kind="fail", payload=b"")) as chunks,
        ):
            with pytest.raises(InvalidInput, match="Odin does not understand"):
                await chunks.receive()
        unreachable = _settings(odin=NeighbourSettings(address=f"127.0.0.1:{_free_port()}"))
        async with (
            open_neighbours(island, unreachable) as neighbours,
            neighbours.odin.forward(OdinRequest(kind="k", payload=b"x")) as chunks,
        ):
            with pytest.raises(Unavailable, match="Odin is unreachable"):
                await chunks.receive()
        async with open_neighbours(island, _settings()) as neighbours:
            with pytest.raises(Unavailable, match="Odin is not configured"):
                async with neighbours.odin.forward(OdinRequest(kind="k", payload=b"x")):
                    pass


async def test_leaving_an_odin_answer_early_cancels_it_on_odin() -> None:
    odin = FakeOdin(on_request=Signal(), on_cancel=Signal())
    async with serve_fakes(odin) as address, open_island() as island:
        settings = _settings(odin=NeighbourSettings(address=address))
        async with open_neighbours(island, settings) as neighbours:
            async with neighbours.odin.forward(OdinRequest(kind="slow", payload=b"x")):
                with trio.fail_after(5):
                    await odin.on_request.event.wait()
            # Leaving the block resets the stream; Odin's handler is cancelled.
            with trio.fail_after(5):
                await odin.on_cancel.event.wait()
    assert odin.cancelled == 1


async def test_bifrost_relays_frames_both_ways() -> None:
    bifrost = FakeBifrost()
    async with serve_fakes(bifrost) as address, open_island() as island:
        settings = _settings(bifrost=NeighbourSettings(address=address))
        async with (
            open_neighbours(island, settings) as neighbours,
            neighbours.bifrost.open_relay("d-1", "n-1") as relay,
        ):
            assert (relay.info.relay_id, relay.info.host) == ("relay-1", "far.example")
            for i in range(100):
                await relay.frames_out.send(b"frame-%d" % i)
            for i in range(100):
                assert await relay.frames_in.receive() == (b"frame-%d" % i)[::-1]
    assert (bifrost.opened[0].device_id, bifrost.opened[0].network_id) == ("d-1", "n-1")


async def test_bifrost_failures_are_unavailable() -> None:
    async with open_island() as island:
        unreachable = _settings(bifrost=NeighbourSettings(address=f"127.0.0.1:{_free_port()}", timeout_s=1))
        async with open_neighbours(island, unreachable) as neighbours:
            with pytest.raises(Unavailable, match="Bifrost"):
                async with neighbours.bifrost.open_relay("d-1", "n-1"):
                    pass
        async with open_neighbours(island, _settings()) as neighbours:
            with pytest.raises(Unavailable, match="Bifrost is not configured"):
                async with neighbours.bifrost.open_relay("d-1", "n-1"):
                    pass


async def test_clients_on_a_stopped_island_fail_at_once() -> None:
    async with open_island() as island:
        pass
    settings = _settings(
        odin=NeighbourSettings(address="127.0.0.1:9"), heimdall=HeimdallSettings(address="127.0.0.1:9")
    )
    async with open_neighbours(island, settings) as neighbours:
        with trio.fail_after(5):
            with pytest.raises(Unavailable, match="stopped"):
                async with neighbours.odin.forward(OdinRequest(kind="k", payload=b"")):
                    pass
            with pytest.raises(Unavailable, match="stopped"):
                await neighbours.heimdall.validate_token("hd_x")
