"""Randomised concurrent workloads against LockService, judged by the linearizability checker.

Each history: 5 clients, >= 500 operations, two resources, random modes, priorities, leases and
wait times, pauses past lease expiry, disconnects (session end + grace), deadlocks under both
policies, and one crash + restart (a new LockService from the same journal) half-way. Time is
Trio's autojump clock. Besides the checker, every grant is checked against the ground truth kept
by the event hook, and a fenced store per resource checks the fencing discipline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from node.clock import WallClock
from node.errors import NodeError, NotFound, Unavailable
from node.locks import (
    DeadlockPolicy,
    Lease,
    LockEvent,
    LockExpired,
    LockGranted,
    LockMode,
    LockPreempted,
    LockReleased,
    LockSettings,
    ReleaseCause,
)
from node.locks.journal import JournalSnapshot, MemoryLockJournal
from node.locks.service import LockService, open_lock_service

from .linearizability import History, Op, check

HISTORIES = 20
OPS_PER_HISTORY = 500
CLIENTS = 5
RESOURCES = ("r0", "r1")
WALL = 1_800_000_000.0


@dataclass
class FencedStore:
    """A protected resource: rejects writes whose token is lower than one it has seen."""

    max_seen: int = 0
    accepted: int = 0
    rejected: int = 0

    def write(self, token: int) -> bool:
        if token < self.max_seen:
            self.rejected += 1
            return False
        self.max_seen = token
        self.accepted += 1
        return True


@dataclass
class Harness:
    seed: int
    rng: random.Random
    history: History = field(default_factory=History)
    truth: dict[str, dict[int, tuple[str, LockMode]]] = field(default_factory=dict)
    max_granted: dict[str, int] = field(default_factory=dict)
    last_exclusive: dict[str, int] = field(default_factory=dict)
    stores: dict[str, FencedStore] = field(default_factory=dict)
    locks: LockService | None = None
    ops: int = 0
    stale_accepted: int = 0
    legit_rejected: int = 0
    restarts: int = 0
    events: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def hook(self, event: LockEvent) -> None:
        name = type(event).__name__
        self.events[name] = self.events.get(name, 0) + 1
        if isinstance(event, LockGranted):
            lease = event.lease
            holders = self.truth.setdefault(lease.resource, {})
            if not all(
                mode is LockMode.SHARED and lease.mode is LockMode.SHARED for _, mode in holders.values()
            ):
                self.violations.append(f"two conflicting holders: {lease}")
            last = self.max_granted.get(lease.resource, 0)
            if lease.token <= last:
                self.violations.append(f"token went back: {lease}")
            self.max_granted[lease.resource] = max(lease.token, last)
            holders[lease.token] = (lease.owner, lease.mode)
        elif isinstance(event, LockExpired | LockPreempted | LockReleased):
            lease = event.lease
            self.truth.get(lease.resource, {}).pop(lease.token, None)
            if not (isinstance(event, LockReleased) and event.cause is ReleaseCause.RELEASED):
                self.history.point(Op("env", "lose", lease.resource, token=lease.token))

    def restarted(self, locks: LockService) -> None:
        """Reconcile the ground truth with what the new service restored from the journal."""
        restored = {(lease.resource, lease.token): lease for view in locks.list() for lease in view.holders}
        for resource, holders in self.truth.items():
            for token in list(holders):
                if (resource, token) not in restored:
                    del holders[token]
                    self.history.point(Op("env", "lose", resource, token=token))
        for (resource, token), lease in restored.items():
            holders = self.truth.setdefault(resource, {})
            if token not in holders:
                holders[token] = (lease.owner, lease.mode)
                self.history.point(Op(lease.owner, "restore", resource, lease.mode.value, token=token))

    def write(self, resource: str, token: int) -> None:
        accepted = self.stores.setdefault(resource, FencedStore()).write(token)
        current = token == self.last_exclusive.get(resource)
        if accepted and not current:
            self.stale_accepted += 1
        if not accepted and current and token in self.truth.get(resource, {}):
            self.legit_rejected += 1


async def client(h: Harness, name: str) -> None:
    rng = random.Random(f"{h.seed}-{name}")
    session_no = 0
    held: dict[tuple[str, int], Lease] = {}
    while h.ops < OPS_PER_HISTORY:
        locks = h.locks
        if locks is None:
            await trio.sleep(0.5)  # the node is restarting
            continue
        roll = rng.random()
        session = f"{name}-{session_no}"
        if roll < 0.45 or not held:
            h.ops += 1  # lock operations count towards the history's length
            await acquire(h, locks, rng, name, session, held)
        elif roll < 0.65:
            h.ops += 1
            await release(h, locks, rng, name, held)
        elif roll < 0.75:
            h.ops += 1
            await refresh(h, locks, rng, name, held)
        elif roll < 0.9:
            key = rng.choice(sorted(held))
            await trio.sleep(rng.uniform(0, 2 * held[key].lease_s))  # a pause, maybe too long
            if held[key].mode is LockMode.EXCLUSIVE:
                h.write(key[0], key[1])
        elif roll < 0.95:
            locks.end_session(session)  # a disconnect; the client comes back as a new session
            session_no += 1
            held.clear()
        else:
            await trio.sleep(rng.choice([0.1, 1.0, 3.0]))


async def acquire(
    h: Harness,
    locks: LockService,
    rng: random.Random,
    name: str,
    session: str,
    held: dict[tuple[str, int], Lease],
) -> None:
    mine = {r for r, _ in held}
    free = [r for r in RESOURCES if r not in mine]
    # Mostly ask for what we do not hold; sometimes re-ask (a self-wait: refused with Deadlock).
    resource = rng.choice(free if free and rng.random() < 0.9 else list(RESOURCES))
    mode = LockMode.SHARED if rng.random() < 0.35 else LockMode.EXCLUSIVE
    op = h.history.invoke(Op(name, "acquire", resource, mode.value))
    try:
        lease = await locks.acquire(
            resource,
            owner=name,
            session=session,
            mode=mode,
            lease_s=rng.choice([0.5, 2.0, 6.0]),
            wait_s=rng.choice([0.0, 1.0, 4.0]),
            priority=rng.randint(0, 3),
        )
    except NodeError:
        h.history.respond(op, token=None)
        return
    h.history.respond(op, token=lease.token)
    # Never told it holds a lock it does not hold (expired, preempted, lost in a restart).
    if lease.expires_at <= trio.current_time() or lease.token not in h.truth[resource]:
        h.violations.append(f"told it holds a lock it does not hold: {lease}")
    held[(resource, lease.token)] = lease
    if mode is LockMode.EXCLUSIVE:
        h.last_exclusive[resource] = lease.token
        h.write(resource, lease.token)  # the new holder fences the store at once


async def release(
    h: Harness,
    locks: LockService,
    rng: random.Random,
    name: str,
    held: dict[tuple[str, int], Lease],
) -> None:
    resource, token = key = rng.choice(sorted(held))
    op = h.history.invoke(Op(name, "release", resource, token=token))
    try:
        await locks.release(resource, token, owner=name)
        h.history.respond(op, ok=True)
    except NotFound:
        h.history.respond(op, ok=False)
    except Unavailable:
        pass  # left pending: it may or may not have happened
    del held[key]


async def refresh(
    h: Harness,
    locks: LockService,
    rng: random.Random,
    name: str,
    held: dict[tuple[str, int], Lease],
) -> None:
    resource, token = key = rng.choice(sorted(held))
    op = h.history.invoke(Op(name, "refresh", resource, token=token))
    try:
        held[key] = await locks.refresh(resource, token, owner=name, lease_s=rng.choice([1.0, 5.0]))
        h.history.respond(op, ok=True)
    except NotFound:
        h.history.respond(op, ok=False)
        del held[key]
    except Unavailable:
        pass


async def run_node(
    h: Harness,
    settings: LockSettings,
    journal: MemoryLockJournal,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service; crash it once half-way and start a new one from the same journal."""
    started = False
    while True:
        with trio.CancelScope() as crash:
            async with open_lock_service(
                settings, journal, event_hook=h.hook, wall_clock=WallClock(WALL)
            ) as locks:
                if h.restarts:
                    h.restarted(locks)
                h.locks = locks
                if not started:
                    started = True
                    task_status.started()
                while h.ops < OPS_PER_HISTORY // 2 or h.restarts:
                    await trio.sleep(0.25)
                crash.cancel()  # no graceful flush: whatever the journal has not got is lost
                await trio.lowlevel.checkpoint()
        h.locks = None
        h.restarts += 1
        await trio.sleep(h.rng.choice([0.5, 2.0]))


def settings_for(seed: int) -> LockSettings:
    return LockSettings(
        deadlock_policy=list(DeadlockPolicy)[seed % 2],
        aging_interval_s=1.0 if seed % 3 == 0 else 0.0,
        session_grace_s=[0.0, 1.0, 3.0][seed % 3],
        token_reserve_block=[1, 8, 1024][seed % 3],
        durable_grants=seed % 4 == 1,
        max_priority=3,
    )


async def run_history(seed: int, journal: MemoryLockJournal | None = None) -> Harness:
    h = Harness(seed, random.Random(seed))
    journal = journal or MemoryLockJournal()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_node, h, settings_for(seed), journal)
        async with trio.open_nursery() as clients:
            for i in range(CLIENTS):
                clients.start_soon(client, h, f"c{i}")
        nursery.cancel_scope.cancel()
    return h


@pytest.mark.parametrize("seed", range(HISTORIES))
async def test_random_workload_is_linearizable(seed: int, autojump_clock: trio.testing.MockClock) -> None:
    h = await run_history(seed)
    client_ops = [op for op in h.history.ops if op.process != "env" and op.kind != "restore"]
    assert len(client_ops) >= OPS_PER_HISTORY
    assert h.restarts >= 1
    assert h.violations == []
    verdict = check(h.history.ops)
    assert verdict.ok, verdict
    assert h.stale_accepted == 0
    assert h.legit_rejected == 0
    assert sum(store.accepted for store in h.stores.values()) > 0


async def test_workloads_exercise_every_path(autojump_clock: trio.testing.MockClock) -> None:
    """Across a few seeds, the workload hits expiry, preemption, deadlock, sessions, staleness."""
    seen: dict[str, int] = {}
    rejected = 0
    for seed in range(4):
        h = await run_history(seed)
        for name, count in h.events.items():
            seen[name] = seen.get(name, 0) + count
        rejected += sum(store.rejected for store in h.stores.values())
    assert {"LockGranted", "LockRefused", "LockExpired", "LockPreempted", "LockReleased"} <= set(seen)
    assert rejected > 0  # paused holders did try stale writes, and the store refused them


class ForgetfulJournal(MemoryLockJournal):
    """A broken journal that loads nothing back (to show the harness would notice)."""

    async def load(self) -> JournalSnapshot:
        return JournalSnapshot()


async def test_the_harness_catches_tokens_going_back(autojump_clock: trio.testing.MockClock) -> None:
    caught = 0
    for seed in range(3):
        h = await run_history(seed, ForgetfulJournal())
        found = bool(h.violations) or not check(h.history.ops).ok or h.legit_rejected > 0
        caught += found
    assert caught == 3
