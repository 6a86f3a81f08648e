"""The gRPC router: grpclib on its own uvloop thread (the island), bridged to Trio.

This package is the only place in the node that imports asyncio, grpclib, uvloop or the
generated betterproto2 code. The node talks to it through `RpcBackend`, `Authenticator` and the
plain records of `node.rpc.model`.
"""

from node.rpc._bridge import DeadlineExceeded
from node.rpc._health import HealthState, ServingName
from node.rpc._island import Island, open_island
from node.rpc.backend import Authenticator, RpcBackend
from node.rpc.model import (
    AcquireUpdate,
    CapabilityCount,
    CapabilitySnapshot,
    DevicePage,
    DeviceQuery,
    DeviceRecord,
    DeviceRegistration,
    DeviceUpdate,
    DiscoverQuery,
    HeartbeatResult,
    LeaseInfo,
    LockChange,
    LockPage,
    LockQuery,
    LockRequest,
    LockSummary,
    Principal,
    Registered,
    SendResult,
    ServiceStatus,
    StatusEvent,
    StatusWatch,
)
from node.rpc.service import SERVICE_NAMES, RpcServer, serve_rpc
from node.rpc.settings import HeimdallSettings, NeighbourSettings, RpcSettings

__all__ = [
    "SERVICE_NAMES",
    "AcquireUpdate",
    "Authenticator",
    "CapabilityCount",
    "CapabilitySnapshot",
    "DeadlineExceeded",
    "DevicePage",
    "DeviceQuery",
    "DeviceRecord",
    "DeviceRegistration",
    "DeviceUpdate",
    "DiscoverQuery",
    "HealthState",
    "HeartbeatResult",
    "HeimdallSettings",
    "Island",
    "LeaseInfo",
    "LockChange",
    "LockPage",
    "LockQuery",
    "LockRequest",
    "LockSummary",
    "NeighbourSettings",
    "Principal",
    "Registered",
    "RpcBackend",
    "RpcServer",
    "RpcSettings",
    "SendResult",
    "ServiceStatus",
    "ServingName",
    "StatusEvent",
    "StatusWatch",
    "open_island",
    "serve_rpc",
]
