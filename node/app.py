"""The node process: one Trio root nursery running every service.

Start-up: take the store's lock file, migrate, bootstrap the first admin token, start each service
with `nursery.start` (each reports its bound address), then announce the addresses as one JSON line.
Shutdown (SIGINT/SIGTERM or `NodeHandle.stop()`): readiness turns to 'stopping', listeners stop
accepting and drain, and whatever is still running when `server.shutdown_grace_s` has passed is
cancelled. Storage closes last, after every service has flushed what it buffers.
"""

from __future__ import annotations

import gc
import os
import secrets
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from pydantic import SecretStr

import node
from node.api import ApiContext, serve_api
from node.clock import WallClock
from node.config import ConfigWatcher, Settings
from node.locks import LockService, serve_locks
from node.locks.sqlite_journal import SqliteLockJournal
from node.logs import Logs, event, logger
from node.mesh._peer import server_ssl
from node.mesh.discovery import Discovery
from node.mesh.election import LeaderElection
from node.mesh.service import Mesh
from node.mesh.settings import split_address
from node.registry import Registry
from node.relay import LeaseBook, RelayLocks
from node.relay.service import RelayService
from node.rpc.node_backend import (
    Capabilities,
    NodeAuthenticator,
    NodeBackend,
    NodeLocks,
    NodeRouting,
    NodeRpc,
    ServiceBoard,
)
from node.storage import Storage, StoreLock, open_storage
from node.tokens import AuditLog, TokenService, bootstrap_admin
from node.turn import TurnAddresses, TurnService, TurnSettings
from node.turn.store_users import StoreUsers
from store import meta

log = logger("node")


@dataclass
class NodeHandle:
    """What a running node exposes to its starter (CLI, tests, benchmarks)."""

    node_id: str
    addresses: dict[str, str]
    admin_token: str | None
    settings: Settings
    storage: Storage
    registry: Registry
    tokens: TokenService
    api: ApiContext
    _stop: trio.Event = field(default_factory=trio.Event)
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        self._stop.set()

    def publish(
        self,
        name: str,
        service: Any,
        *,
        stats: Callable[[], Any] | None = None,
        reload: Callable[[Settings], Any] | None = None,
    ) -> None:
        """Make a started service known: `extra[name]`, its admin statistics, its live settings."""
        self.extra[name] = service
        if stats is not None:
            self.api.stats_providers[name] = stats
        if reload is not None:
            self.extra.setdefault("reload_hooks", []).append(reload)

    def announcement(self) -> dict[str, Any]:
        """The one JSON line printed when the node is up."""
        line: dict[str, Any] = dict(self.addresses)
        line["node_id"] = self.node_id
        line["pid"] = os.getpid()
        if self.admin_token:
            line["admin_token"] = self.admin_token
        return line


def ephemeral_overrides(data_dir: Path) -> dict[str, Any]:
    """Settings for `serve --ephemeral`: a temporary store, every listener on 127.0.0.1, port 0."""
    overrides: dict[str, Any] = {"server.host": "127.0.0.1", "server.data_dir": str(data_dir)}
    for section, fld in Settings.model_fields.items():
        model = fld.annotation
        fields = getattr(model, "model_fields", {})
        if "port" in fields:
            overrides[f"{section}.port"] = 0
        if "host" in fields and section != "server":
            overrides[f"{section}.host"] = "127.0.0.1"
    # Local by construction: a TURN client on this host may relay to peers on this host.
    overrides["turn.allow_loopback_peers"] = True
    return overrides


@asynccontextmanager
async def temporary_data_dir() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="asgard-ephemeral-") as tmp:
        yield Path(tmp)


def _stored_secret(conn: Any, key: str) -> str:
    """A random secret kept in the store's meta table (created on first use)."""
    value = meta.get(conn, key)
    if value is None:
        value = secrets.token_urlsafe(32)
        meta.put(conn, key, value)
    return value


def _node_identity(conn: Any, now: float) -> tuple[str, str | None]:
    node_id = meta.get(conn, "node_id")
    if node_id is None:
        node_id = str(uuid.uuid4())
        meta.put(conn, "node_id", node_id)
    return node_id, bootstrap_admin(conn, now)


def _process_statistics() -> dict[str, Any]:
    """The Python process: the cyclic collector's runs per generation and what `asgard serve`
    froze after start-up (objects the collector no longer walks)."""
    return {
        "gc_collections": [generation["collections"] for generation in gc.get_stats()],
        "gc_frozen_objects": gc.get_freeze_count(),
    }


async def run_node(
    settings: Settings,
    *,
    config_path: Path | None = None,
    handle_signals: bool = True,
    overrides: dict[str, Any] | None = None,
    task_status: trio.TaskStatus[NodeHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node until stopped. Reports a NodeHandle once every service is up.

    `overrides` are the dotted-key settings applied on top of the file (e.g. by `--ephemeral`);
    hot reload applies them again to every new version of the file.
    """
    logs = Logs(settings.logging, settings.server.data_dir)
    db_path = settings.store_path()
    lock = StoreLock(db_path)
    lock.acquire()
    try:
        async with open_storage(db_path, settings.store) as storage:
            await _run_services(settings, storage, logs, config_path, overrides, handle_signals, task_status)
    finally:
        lock.release()
        logs.close()


async def _run_services(
    settings: Settings,
    storage: Storage,
    logs: Logs,
    config_path: Path | None,
    overrides: dict[str, Any] | None,
    handle_signals: bool,
    task_status: trio.TaskStatus[NodeHandle],
) -> None:
    clock = WallClock()
    node_id, admin_token = await storage.write(_node_identity, clock.now())
    registry = Registry(storage, settings.registry, clock)
    tokens = TokenService(storage, clock)
    audit = AuditLog(storage, clock)
    api = ApiContext(
        settings=settings,
        node_id=node_id,
        clock=clock,
        storage=storage,
        registry=registry,
        tokens=tokens,
        audit=audit,
        logs=logs,
        started_at=clock.now(),
    )
    api.stats_providers["registry"] = registry.statistics
    api.stats_providers["store"] = lambda: vars(storage.stats).copy()
    handle = NodeHandle(node_id, {}, admin_token, settings, storage, registry, tokens, api)
    watcher = None
    if config_path:
        watcher = ConfigWatcher(config_path, settings, _applier(handle, logs), overrides=overrides)
        api.stats_providers["config"] = watcher.statistics
        handle.extra["config_watcher"] = watcher
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        await _start_locks(nursery, handle, settings, clock)
        if settings.turn.enabled:
            await _start_turn(nursery, handle, settings, clock)
        nursery.start_soon(tokens.run, name="tokens-last-used")
        nursery.start_soon(audit.run, name="audit-writer")
        host = settings.host_for(settings.api.host)
        api_done = trio.Event()
        handle.addresses["api"] = await nursery.start(
            _until_done, api_done, serve_api, api, host, settings.api.port, shutdown
        )
        drained = [api_done]
        if settings.relay.enabled:
            drained.append(await _start_relay(nursery, handle, settings, clock, shutdown))
        if settings.mesh.enabled:
            drained.append(await _start_mesh(nursery, handle, settings, clock, audit, shutdown))
        drained.append(await _start_rpc(nursery, handle, settings, clock, shutdown))
        await _start_election(nursery, handle, settings, clock)
        if settings.mesh.enabled and settings.mesh.discovery.mdns:
            await _start_discovery(nursery, handle, settings, clock)
        if watcher:
            nursery.start_soon(watcher.run, settings.server.config_poll_interval_s, name="config-watch")
        if handle_signals:
            nursery.start_soon(_stop_on_signal, handle, name="signals")
        handle.api.stats_providers["process"] = _process_statistics
        api.state = "ok"
        event(log, 20, "node ready", node_id=node_id, version=node.__version__, **handle.addresses)
        task_status.started(handle)
        await handle._stop.wait()
        event(log, 20, "node stopping", grace_s=settings.server.shutdown_grace_s)
        api.state = "stopping"
        shutdown.set()
        with trio.move_on_after(settings.server.shutdown_grace_s):
            for done in drained:
                await done.wait()
            for flush in handle.extra.get("flush_hooks", []):
                await flush()  # what the services buffer reaches the store before they are cancelled
        nursery.cancel_scope.cancel()


async def _start_locks(
    nursery: trio.Nursery, handle: NodeHandle, settings: Settings, clock: WallClock
) -> None:
    """Start the lock service on the store's journal; publish its statistics and live settings."""
    book = LeaseBook()  # leases granted on the relay and over gRPC, told when they end
    journal = SqliteLockJournal(handle.storage)
    locks: LockService = await nursery.start(
        partial(serve_locks, settings.locks, journal, event_hook=book.publish, wall_clock=clock)
    )
    handle.api.locks = locks
    handle.publish("locks", locks, stats=locks.statistics, reload=lambda new: locks.apply_settings(new.locks))
    handle.extra["lease_book"] = book
    handle.extra.setdefault("flush_hooks", []).append(locks.flush)


async def _start_turn(
    nursery: trio.Nursery, handle: NodeHandle, settings: Settings, clock: WallClock
) -> None:
    """Start STUN/TURN. Without a configured REST secret, one generated at first start (kept in the
    store) signs the credentials of POST /api/v1/turn/credentials, so that endpoint works by default."""
    stored = await handle.storage.write(_stored_secret, "turn_rest_secret")

    def effective(turn: TurnSettings) -> TurnSettings:
        return turn if turn.rest_secrets else turn.model_copy(update={"rest_secrets": [SecretStr(stored)]})

    users = StoreUsers(handle.storage, clock)
    service = TurnService(effective(settings.turn), users=users, default_host=settings.server.host)
    addresses: TurnAddresses = await nursery.start(service.serve)
    host, port = (addresses.udp or addresses.tcp)[0]
    handle.addresses["turn"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    handle.api.turn, handle.api.turn_users = service, users
    handle.publish(
        "turn",
        service,
        stats=lambda: service.statistics().as_dict(),
        reload=lambda new: service.apply_settings(effective(new.turn)),
    )


async def _start_relay(
    nursery: trio.Nursery, handle: NodeHandle, settings: Settings, clock: WallClock, shutdown: trio.Event
) -> trio.Event:
    """Start the WebSocket relay; announce it, publish its statistics, apply its live settings."""
    relay = RelayService(
        settings.relay,
        storage=handle.storage,
        registry=handle.registry,
        tokens=handle.tokens,
        clock=clock,
        node_name=settings.server.node_name,
    )
    RelayLocks(relay, handle.extra["locks"], handle.extra["lease_book"], clock).install()
    done = trio.Event()
    host = settings.host_for(settings.relay.host)
    serve = partial(relay.serve, shutdown=shutdown)
    handle.addresses["relay"] = await nursery.start(_until_done, done, serve, host, settings.relay.port)
    handle.publish("relay", relay, stats=relay.statistics, reload=lambda new: relay.apply_settings(new.relay))
    return done


async def _start_rpc(
    nursery: trio.Nursery, handle: NodeHandle, settings: Settings, clock: WallClock, shutdown: trio.Event
) -> trio.Event:
    """Start the gRPC router over the registry, the relay's router and the lock service."""
    board = _service_board(handle, settings)
    locks: LockService = handle.extra["locks"]
    is_cluster = settings.locks.is_cluster_resource
    backend = NodeBackend(
        registry=handle.registry,
        routing=NodeRouting(handle.extra.get("relay"), handle.registry),
        locks=NodeLocks(locks, handle.extra["lease_book"], clock, is_cluster),
        caps=Capabilities(handle.node_id, handle.registry, board, clock.now),
        api=settings.api,
    )
    rpc = NodeRpc(settings.rpc, backend, NodeAuthenticator(handle.tokens), board)
    done = trio.Event()
    host = settings.host_for(settings.rpc.host)
    serve = partial(rpc.serve, shutdown=shutdown)
    handle.addresses["rpc"] = await nursery.start(_until_done, done, serve, host)

    def reload(new: Settings) -> None:
        rpc.apply_settings(new.rpc)
        backend.apply_settings(new.api)

    handle.publish("rpc", rpc, stats=rpc.statistics, reload=reload)
    return done


async def _start_mesh(
    nursery: trio.Nursery,
    handle: NodeHandle,
    settings: Settings,
    clock: WallClock,
    audit: AuditLog,
    shutdown: trio.Event,
) -> trio.Event:
    """Start the mesh (its listener for peer links, registry sync, cross-node routing); announce the
    listener as `mesh`. TLS on the listener with the node's rpc certificate, when it has one."""
    relay: RelayService | None = handle.extra.get("relay")
    rpc = settings.rpc
    tls = (
        server_ssl(str(rpc.tls_cert_path), str(rpc.tls_key_path))
        if rpc.tls_cert_path and rpc.tls_key_path
        else None
    )
    mesh = Mesh(
        settings.mesh,
        node_id=handle.node_id,
        node_name=settings.server.node_name,
        storage=handle.storage,
        relay=relay,
        audit=audit,
        wall=clock,
        election=lambda: handle.extra.get("election"),
        host=settings.host_for(settings.mesh.host),
        tls=tls,
    )
    if relay is not None and mesh.routes is not None:
        relay.router.peers = mesh.routes
        relay.on_session_opened(
            lambda link: mesh.session_opened(link.device.device_id) if link.device else None
        )
    done = trio.Event()
    handle.addresses["mesh"] = await nursery.start(_until_done, done, partial(mesh.run, shutdown=shutdown))
    handle.publish("mesh", mesh, stats=mesh.statistics, reload=lambda new: mesh.apply_settings(new.mesh))
    return done


async def _start_election(
    nursery: trio.Nursery, handle: NodeHandle, settings: Settings, clock: WallClock
) -> None:
    """Start the leader election (on etcd with mesh.election.etcd_endpoints, else standalone)."""
    election = LeaderElection(
        settings.mesh.election, node_id=handle.node_id, cluster_id=settings.mesh.cluster_id, clock=clock
    )
    await nursery.start(election.run)
    handle.publish(
        "election",
        election,
        stats=election.status,
        reload=lambda new: election.apply_settings(new.mesh.election),
    )


async def _start_discovery(
    nursery: trio.Nursery, handle: NodeHandle, settings: Settings, clock: WallClock
) -> None:
    """Announce this node over mDNS; the nodes it finds go to the mesh as hints (dialled, not trusted)."""

    def on_hint(address: str, node_id: str | None) -> None:
        mesh = handle.extra.get("mesh")
        if mesh is not None:
            mesh.add_hint(address, node_id)

    ports: dict[str, int] = {}
    for name in ("mesh", "rpc", "relay", "api"):  # announced as host:port or as URLs (ws://host:port/v1/ws)
        address = handle.addresses.get(name, "")
        port = urlsplit(address if "://" in address else f"//{address}").port
        if port:
            ports[name] = port
    host = None
    if settings.mesh.advertise_address:
        host, ports["mesh"] = split_address(settings.mesh.advertise_address)
    discovery = Discovery(
        settings.mesh.discovery,
        node_id=handle.node_id,
        cluster_id=settings.mesh.cluster_id,
        version=node.__version__,
        ports=ports,
        on_hint=on_hint,
        clock=clock,
        address=host,
    )
    await nursery.start(discovery.run)
    handle.publish("discovery", discovery, stats=discovery.statistics)


def _service_board(handle: NodeHandle, settings: Settings) -> ServiceBoard:
    """The node's services as GetCapabilities reports them (set once the others are up)."""
    board = ServiceBoard()
    board.set("api", "running", address=handle.addresses.get("api", ""), capability="rest")
    board.set("registry", "running", capability="registry")
    cluster = "cluster locks on etcd" if settings.locks.etcd_endpoints else ""
    board.set("locks", "running", detail=cluster, capability="locks")
    if settings.relay.enabled:
        board.set("relay", "running", address=handle.addresses.get("relay", ""), capability="routing")
    else:
        board.set("relay", "disabled")
    if settings.turn.enabled:
        board.set("turn", "running", address=handle.addresses.get("turn", ""), capability="turn")
    else:
        board.set("turn", "disabled")
    return board


async def _until_done(
    done: trio.Event, serve: Callable[..., Any], *args: Any, task_status: trio.TaskStatus[Any]
) -> None:
    """Run a server task and set `done` when it returns (it drained after its shutdown trigger)."""
    try:
        await serve(*args, task_status=task_status)
    finally:
        done.set()


def _applier(handle: NodeHandle, logs: Logs) -> Callable[[Settings], None]:
    def apply(settings: Settings) -> None:
        handle.settings = settings
        logs.apply(settings.logging)
        handle.registry.apply(settings.registry)
        handle.api.apply(settings)
        for hook in handle.extra.get("reload_hooks", []):
            hook(settings)

    return apply


async def _stop_on_signal(handle: NodeHandle) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            handle.stop()
            return
