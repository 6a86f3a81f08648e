"""Lock service: leases, fencing tokens, priorities, deadlock detection; cluster locks on etcd."""

from node.locks._types import (
    AcquireRequest,
    DeadlockPolicy,
    Lease,
    LockEvent,
    LockExpired,
    LockGranted,
    LockMode,
    LockPreempted,
    LockQueued,
    LockRefreshed,
    LockRefused,
    LockReleased,
    RefusalReason,
    ReleaseCause,
    ResourceView,
    WaiterView,
)
from node.locks._types import compatible as compatible_modes
from node.locks.settings import LockSettings
from node.locks.state import LockState

__all__ = [
    "AcquireRequest",
    "DeadlockPolicy",
    "Lease",
    "LockEvent",
    "LockExpired",
    "LockGranted",
    "LockMode",
    "LockPreempted",
    "LockQueued",
    "LockRefreshed",
    "LockRefused",
    "LockReleased",
    "LockSettings",
    "LockState",
    "RefusalReason",
    "ReleaseCause",
    "ResourceView",
    "WaiterView",
    "compatible_modes",
]
