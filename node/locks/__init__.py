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
from node.locks.etcd import (
    Election,
    EtcdClient,
    EtcdSession,
    QueueEntry,
    open_etcd_client,
    open_etcd_session,
)
from node.locks.journal import (
    CounterReserved,
    JournalRecord,
    JournalSnapshot,
    LeaseEnded,
    LeaseRecord,
    LockJournal,
    MemoryLockJournal,
)
from node.locks.service import LockService, open_lock_service, serve_locks
from node.locks.settings import LockSettings
from node.locks.state import LockState

__all__ = [
    "AcquireRequest",
    "CounterReserved",
    "DeadlockPolicy",
    "Election",
    "EtcdClient",
    "EtcdSession",
    "JournalRecord",
    "JournalSnapshot",
    "Lease",
    "LeaseEnded",
    "LeaseRecord",
    "LockEvent",
    "LockExpired",
    "LockGranted",
    "LockJournal",
    "LockMode",
    "LockPreempted",
    "LockQueued",
    "LockRefreshed",
    "LockRefused",
    "LockReleased",
    "LockService",
    "LockSettings",
    "LockState",
    "MemoryLockJournal",
    "QueueEntry",
    "RefusalReason",
    "ReleaseCause",
    "ResourceView",
    "WaiterView",
    "compatible_modes",
    "open_etcd_client",
    "open_etcd_session",
    "open_lock_service",
    "serve_locks",
]
