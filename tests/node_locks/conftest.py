"""A real node with the relay and the gRPC router (the node_rpc fixtures), for lock tests on both
surfaces: WebSocket device clients (`client.locks`) and the grpcio LockService / Connect stream."""

from __future__ import annotations

from tests.node_rpc.conftest import ConnectSession, bearer, grpc_client, rpc_target  # noqa: F401
from tests.relay.conftest import env, start_relay  # noqa: F401 - fixtures
from tests.rpc.conftest import stubs  # noqa: F401 - fixture
