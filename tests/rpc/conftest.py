"""Fixtures for the gRPC router tests: grpcio stubs built from protos/ at session start, a running
router on 127.0.0.1:0 over the in-memory backend, and a grpcio channel to it.

grpcio's calls block, so they run in Trio worker threads (`Client.call`): the router's Trio side
must keep running while a call waits for it. Every call has a hard timeout.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import trio

from node.rpc import Principal, RpcServer, RpcSettings
from node.rpc.testing import MemoryBackend, StaticAuthenticator

REPO = Path(__file__).resolve().parents[2]
STUBS_PACKAGE = "asgard_stubs"
NET_A = "11111111-1111-4111-8111-111111111111"
NET_B = "22222222-2222-4222-8222-222222222222"
DEVICE = "33333333-3333-4333-8333-333333333333"
ADMIN = Principal("tok_admin", "admin")
DEVICE_PRINCIPAL = Principal("tok_device", "device", networks=(NET_A,), device_id=DEVICE)
TOKENS = {"asg_admin": ADMIN, "asg_device": DEVICE_PRINCIPAL}
ADMIN_MD = (("authorization", "Bearer asg_admin"),)
CALL_TIMEOUT_S = 10.0

_MODULES = {
    "registry": "asgard.v1.registry",
    "routing": "asgard.v1.routing",
    "capabilities": "asgard.v1.capabilities",
    "locks": "asgard.v1.locks",
    "odin": "asgard.v1.odin",
    "heimdall": "asgard.v1.heimdall",
    "bifrost": "asgard.v1.bifrost",
    "health": "grpc.health.v1.health",
}


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """grpcio-tools stubs of every proto, as `stubs.<name>` (pb2) and `stubs.<name>_grpc`.

    The protos are mapped under a virtual `asgard_stubs/` prefix so that the generated
    `grpc/health/v1` package cannot shadow grpcio's own `grpc` package.
    """
    out = tmp_path_factory.mktemp("grpcio_stubs")
    files = [f"{STUBS_PACKAGE}/{path.replace('.', '/')}.proto" for path in _MODULES.values()]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{STUBS_PACKAGE}={REPO / 'protos'}",
         f"--python_out={out}", f"--grpc_python_out={out}", *files],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    sys.path.insert(0, str(out))
    try:
        namespace = SimpleNamespace()
        for name, module in _MODULES.items():
            base = f"{STUBS_PACKAGE}.{module}"
            setattr(namespace, name, importlib.import_module(f"{base}_pb2"))
            setattr(namespace, f"{name}_grpc", importlib.import_module(f"{base}_pb2_grpc"))
        yield namespace
    finally:
        sys.path.remove(str(out))


@dataclass
class Running:
    """A router serving on loopback."""

    server: RpcServer
    address: tuple[str, int]

    @property
    def target(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


class Client:
    """A grpcio channel whose blocking calls run in a Trio worker thread with a hard timeout."""

    def __init__(self, channel: grpc.Channel, stubs: SimpleNamespace) -> None:
        self.channel = channel
        self.stubs = stubs
        self.registry = stubs.registry_grpc.RegistryStub(channel)
        self.routing = stubs.routing_grpc.RoutingStub(channel)
        self.capabilities = stubs.capabilities_grpc.CapabilitiesStub(channel)
        self.locks = stubs.locks_grpc.LockServiceStub(channel)
        self.health = stubs.health_grpc.HealthStub(channel)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking grpcio call (or iterator step) without blocking Trio."""
        if _takes_timeout(fn):
            kwargs.setdefault("timeout", CALL_TIMEOUT_S)
        with trio.fail_after(CALL_TIMEOUT_S + 5):
            return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def error(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
        """Run a call that must fail; return its error."""
        with pytest.raises(grpc.RpcError) as info:
            await self.call(fn, *args, **kwargs)
        return info.value


def _takes_timeout(fn: Callable[..., Any]) -> bool:
    return isinstance(fn, grpc.UnaryUnaryMultiCallable | grpc.UnaryStreamMultiCallable |
                      grpc.StreamStreamMultiCallable | grpc.StreamUnaryMultiCallable)  # fmt: skip


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def authenticator() -> StaticAuthenticator:
    return StaticAuthenticator(TOKENS)


@pytest.fixture
def rpc_settings() -> RpcSettings:
    return RpcSettings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, reflection=True)


@pytest.fixture
async def rpc(
    nursery: trio.Nursery,
    rpc_settings: RpcSettings,
    backend: MemoryBackend,
    authenticator: StaticAuthenticator,
) -> Running:
    server = RpcServer(rpc_settings, backend, authenticator)
    address = await nursery.start(server.serve)
    return Running(server, address)


@pytest.fixture
async def client(rpc: Running, stubs: SimpleNamespace) -> AsyncIterator[Client]:
    channel = grpc.insecure_channel(rpc.target)
    try:
        yield Client(channel, stubs)
    finally:
        channel.close()
