"""The mesh service: peer links (dialled and accepted), registry sync and cross-node routing.

`Mesh.run` serves the mesh listener (`_accept`: its own TCP port, `[mesh] host` and `port`), runs
one dial loop per known peer address (static `mesh.peers` and discovery hints from `add_hint`,
both naming peers' mesh listeners), the sync task and the routing task; both ends of every link
run on the Trio thread (`_dial`, `_accept`, `_h2end`). Every link is authenticated by the
cluster-secret challenge-response before anything else crosses it; a refusal is logged as a
security event and written to the audit log. Between two nodes one link is kept (the one the
node with the smaller id dialled), a dial loop whose peer is already linked waits for that link
to end, and a lost link is dialled again with exponential backoff and jitter.
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

import node
from node.clock import WallClock
from node.errors import Unavailable
from node.logs import event, logger
from node.mesh import _auth as auth
from node.mesh._accept import ListenerLimits, MeshListener
from node.mesh._dial import open_link
from node.mesh._links import SELF_LINK, Identity, Link, PeerInfo, Refused, accept_handshake, dial_handshake
from node.mesh._linkstate import Backoff, LinkHealth, keep_link_dialled_by
from node.mesh._peer import PeerStream, client_ssl
from node.mesh._peer_model import (
    Digest,
    Fanout,
    Frames,
    Goodbye,
    Handoff,
    HandoffAck,
    Housekeeping,
    PeerMessage,
    Ping,
    Pong,
    Records,
    Versions,
)
from node.mesh._routing import MeshRoutes
from node.mesh._sync import Sync
from node.mesh.settings import MeshSettings, split_address

if TYPE_CHECKING:
    from node.relay.service import RelayService
    from node.storage import Storage
    from node.tokens import AuditLog

log = logger("mesh")


class _SelfAddress(Exception):
    """A dialled address turned out to be this node's own."""


@dataclass(slots=True)
class LinkStats:
    """Counters of the links."""

    opened: int = 0
    closed: int = 0
    refused: int = 0  # handshakes this node refused or that failed its checks
    security_events: int = 0
    dial_failures: int = 0
    duplicates: int = 0


class Mesh:
    """One node's part of the mesh (see the module docstring)."""

    def __init__(
        self,
        settings: MeshSettings,
        *,
        node_id: str,
        node_name: str,
        storage: Storage,
        relay: RelayService | None,
        audit: AuditLog,
        wall: WallClock,
        election: Callable[[], Any] = lambda: None,
        rng: random.Random | None = None,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`host`: the listener's address (`[mesh] host` or server.host); `tls`: the listener's TLS
        context (`node.mesh._peer.server_ssl` with the node's rpc certificate), None for plain TCP."""
        assert settings.cluster_secret is not None
        self.settings = settings
        self.node_id = node_id
        self.node_name = node_name
        self.address = settings.advertise_address or ""
        self.links: dict[str, Link] = {}
        self.stats = LinkStats()
        self._key = auth.link_key(settings.cluster_secret.get_secret_value(), settings.cluster_id)
        self._audit = audit
        self._election = election
        self._rng = rng or random.SystemRandom()
        self._host = host
        ls = settings.link
        limits = ListenerLimits(ls.send_window, ls.queue_max_messages, ls.max_message_bytes,
                                settings.max_connections, ls.handshake_timeout_s)  # fmt: skip
        self.listener = MeshListener(self._accept, limits, tls)
        self._ready = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._dialers: dict[str, trio.CancelScope] = {}
        self._hints: dict[str, str | None] = {}
        self._address_owner: dict[str, str] = {}  # dialled address -> node id it turned out to be
        self._changed = trio.Event()
        self.sync = Sync(node_id, storage, wall, settings.sync, lambda: list(self.links.values()))
        self.routes = (
            MeshRoutes(node_id, self.sync.index, self.links, relay, settings.hop_limit) if relay else None
        )
        self.sync.on_change = lambda rows: self.routes.wake_handoff() if self.routes else None

    # ------------------------------------------------------------------ wiring
    def session_opened(self, device_id: str) -> None:
        """A device registered a session here: this node becomes its home."""
        self.sync.claim(device_id)

    def add_hint(self, address: str, node_id: str | None) -> None:
        """A discovered node (`host:port` of its mesh listener): dial it, trust it only once it
        proves the cluster secret."""
        try:
            split_address(address)
        except ValueError:
            event(log, 30, "mesh hint ignored: not host:port", address=address[:100])
            return
        if node_id == self.node_id or address == self.address:
            return
        self._hints[address] = node_id
        self._start_dialer(address)

    # ------------------------------------------------------------------ running
    async def run(
        self,
        *,
        shutdown: trio.Event | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen, dial, sync and route until cancelled or `shutdown` is set (then the listener
        closes and every link says goodbye). Reports the listener's bound `host:port`."""
        self.sync.load()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            bound = await nursery.start(self.listener.serve, self._host, self.settings.port)
            self.address = self.settings.advertise_address or bound
            self._ready.set()
            nursery.start_soon(self.sync.run, name="mesh-sync")
            if self.routes is not None:
                nursery.start_soon(
                    self.routes.run, lambda: self.settings.sync.handoff_batch, name="mesh-routes"
                )
            nursery.start_soon(self._housekeeping, name="mesh-housekeeping")
            task_status.started(bound)
            for address in (*self.settings.peers, *self._hints):
                self._start_dialer(address)
            if shutdown is None:
                await trio.sleep_forever()
            else:
                await shutdown.wait()
            self.listener.stop_accepting()
            for scope in self._dialers.values():
                scope.cancel()
            self.close_links("node shutting down")
            with trio.move_on_after(1.0):
                for link in list(self.links.values()):
                    await link.stream.closed.wait()
            nursery.cancel_scope.cancel()

    async def _housekeeping(self) -> None:
        """While this node leads, send the fenced tombstone order every `housekeeping_interval_s`."""
        while True:
            await trio.sleep(self.settings.election.housekeeping_interval_s)
            self.send_housekeeping()

    def close_links(self, reason: str) -> None:
        """Say goodbye on every link (node shutdown)."""
        for link in list(self.links.values()):
            link.send(Goodbye(reason))
            link.stream.close()

    def _identity(self) -> Identity:
        return Identity(
            self.node_id, self.settings.cluster_id, node.__version__, self.address, self.node_name
        )

    # ------------------------------------------------------------------ dialling
    def _start_dialer(self, address: str) -> None:
        if self._nursery is None or not self._ready.is_set() or address in self._dialers:
            return
        scope = trio.CancelScope()
        self._dialers[address] = scope
        self._nursery.start_soon(self._dial_loop, address, scope, name=f"mesh-dial {address}")

    async def _dial_loop(self, address: str, scope: trio.CancelScope) -> None:
        link_settings = self.settings.link
        backoff = Backoff(link_settings.backoff_initial_s, link_settings.backoff_max_s, self._rng)
        with scope, contextlib.suppress(_SelfAddress):
            while True:
                await self._wait_while_linked(address)
                if await self._dial_once(address):
                    backoff.reset()
                    continue
                backoff.reshape(self.settings.link.backoff_initial_s, self.settings.link.backoff_max_s)
                await trio.sleep(backoff.next_delay())
        if self._dialers.get(address) is scope and scope.cancel_called:
            del self._dialers[address]  # (an own address keeps its entry: it is not dialled again)

    async def _wait_while_linked(self, address: str) -> None:
        while (peer := self._address_owner.get(address)) in self.links:
            await self.links[peer].stream.closed.wait()

    async def _dial_once(self, address: str) -> bool:
        """One attempt; True when a link was established and taken (and has ended since)."""
        host, port = split_address(address)
        ls = self.settings.link
        tls = client_ssl(str(ls.tls_ca_path) if ls.tls_ca_path else None) if ls.tls else None
        opened = partial(
            open_link, host, port, window=ls.send_window, queue_max=ls.queue_max_messages,
            connect_timeout_s=ls.handshake_timeout_s, tls=tls, tls_server_name=ls.tls_server_name,
            max_message_bytes=ls.max_message_bytes,
        )  # fmt: skip
        try:
            async with opened() as stream:
                with trio.fail_after(ls.handshake_timeout_s):
                    peer = await dial_handshake(stream, self._identity(), self._key)
                self._address_owner[address] = peer.node_id
                return await self._run_link(stream, peer, dialer=self.node_id)
        except Refused as exc:
            if exc.reason.endswith(SELF_LINK):  # this address is this node: never dial it again
                self._address_owner[address] = self.node_id
                raise _SelfAddress from None
            self._refused(exc, address, outbound=True)
        except (Unavailable, trio.TooSlowError, trio.EndOfChannel, trio.BrokenResourceError) as exc:
            self.stats.dial_failures += 1
            event(log, 10, "mesh dial failed", address=address, error=str(exc) or type(exc).__name__)
        return False

    # ------------------------------------------------------------------ accepting
    async def _accept(self, stream: PeerStream) -> None:
        try:
            with trio.fail_after(self.settings.link.handshake_timeout_s):
                peer = await accept_handshake(
                    stream, self._identity(), self._key, self.settings.allowed_nodes
                )
        except Refused as exc:
            self._refused(exc, stream.remote, outbound=False)
            return
        except (Unavailable, trio.TooSlowError, trio.EndOfChannel, trio.BrokenResourceError) as exc:
            event(
                log, 20, "mesh handshake failed", remote=stream.remote, error=str(exc) or type(exc).__name__
            )
            return
        await self._run_link(stream, peer, dialer=peer.node_id)

    def _refused(self, exc: Refused, remote: str, *, outbound: bool) -> None:
        self.stats.refused += 1
        fields = {"remote": remote, "peer": exc.peer[:64], "reason": exc.reason, "outbound": outbound}
        if not exc.security:
            event(log, 30, "mesh link refused", **fields)
            return
        self.stats.security_events += 1
        event(log, 30, "security: mesh peer failed authentication", security=True, **fields)
        self._audit.record(
            actor=f"node:{exc.peer[:64]}" if exc.peer else "node:unknown",
            action="mesh.link",
            target=self.node_id,
            outcome="denied",
            client=remote,
            detail=exc.reason,
        )

    # ------------------------------------------------------------------ a running link
    async def _run_link(self, stream: PeerStream, peer: PeerInfo, *, dialer: str) -> bool:
        """Run an authenticated link until it ends; False when it was not taken (not allowed here,
        or the other link between the pair is the one kept)."""
        link = Link(peer, stream, dialer, trio.current_time(), LinkHealth(trio.current_time()))
        allowed = self.settings.allowed_nodes
        if allowed and peer.node_id not in allowed:  # the acceptor checked it; the dialer does too
            stream.send_nowait(Goodbye("not in mesh.allowed_nodes"))
            self.stats.refused += 1
            return False
        if not self._adopt(link):
            stream.send_nowait(Goodbye("duplicate link"))
            return False
        event(log, 20, "mesh link up", peer=peer.node_id, address=peer.address, dialer=dialer == self.node_id)
        stream.set_handler(partial(self._on_message, link))
        self.sync.link_opened(link)
        if self.routes is not None:
            self.routes.wake_handoff()
        try:
            await self._keepalive(link)
        finally:
            stream.set_handler(None)
            if self.links.get(peer.node_id) is link:
                del self.links[peer.node_id]
            if self.routes is not None:
                self.routes.link_closed(link)
            self.stats.closed += 1
            event(log, 20, "mesh link down", peer=peer.node_id, error=str(stream.error or ""))
        return True

    def _adopt(self, link: Link) -> bool:
        """Make `link` the link to its peer unless the one already there is to be kept."""
        old = self.links.get(link.peer_id)
        if old is not None and not old.stream.closed.is_set():
            keep = keep_link_dialled_by(self.node_id, link.peer_id)
            if old.dialer != link.dialer and old.dialer == keep:
                self.stats.duplicates += 1
                return False
            self.stats.duplicates += 1
            old.send(Goodbye("duplicate link"))
            old.stream.close()
        self.links[link.peer_id] = link
        self.stats.opened += 1
        return True

    async def _keepalive(self, link: Link) -> None:
        """Ping every `ping_interval_s`; close the link once it has been silent `dead_after_s`."""
        stream = link.stream
        while not stream.closed.is_set():
            ls = self.settings.link
            now = trio.current_time()
            if link.health.dead(now, ls.dead_after_s):
                event(log, 30, "mesh link silent; closing", peer=link.peer_id)
                stream.close()
                break
            link.send(Ping(link.health.ping(now)))
            with trio.move_on_after(ls.ping_interval_s):
                await stream.closed.wait()
        with trio.move_on_after(self.settings.link.handshake_timeout_s):
            await stream.closed.wait()

    def _on_message(self, link: Link, message: PeerMessage) -> bool:
        now = trio.current_time()
        link.health.heard(now)
        if isinstance(message, Frames):
            return self.routes.receive_frames(link, message) if self.routes else True
        if isinstance(message, (Records, Digest, Versions, Housekeeping)):
            return self.sync.receive(link, message)
        if isinstance(message, Fanout):
            return self.routes.receive_fanout(link, message) if self.routes else True
        if isinstance(message, (Handoff, HandoffAck)):
            return self.routes.receive_handoff(link, message) if self.routes else True
        if isinstance(message, Ping):
            link.send(Pong(message.id))
        elif isinstance(message, Pong):
            link.health.pong(message.id, now)
        elif isinstance(message, Goodbye):
            link.stream.close()
        return True

    # ------------------------------------------------------------------ housekeeping (leader)
    def housekeeping_order(self) -> Housekeeping | None:
        """The leader's tombstone order, fenced by its term; None when this node does not lead."""
        election = self._election()
        if election is None:
            return None
        status = election.status()
        if not status.get("is_leader") or status.get("term") is None:
            return None
        return Housekeeping(self.node_id, int(status["term"]), max(0, self.sync.own_horizon_ms()))

    def send_housekeeping(self) -> int:
        """Send the leader's order to every link; returns how many got it."""
        order = self.housekeeping_order()
        if order is None:
            return 0
        return sum(1 for link in list(self.links.values()) if link.send(order))

    # ------------------------------------------------------------------ settings and views
    def apply_settings(self, settings: MeshSettings) -> None:
        """Apply the live fields (see node.mesh.settings); the rest waits for a restart."""
        old_peers = set(self.settings.peers)
        self.settings = self.settings.model_copy(
            update={
                "peers": settings.peers,
                "allowed_nodes": settings.allowed_nodes,
                "hop_limit": settings.hop_limit,
                "link": self.settings.link.model_copy(
                    update={
                        k: getattr(settings.link, k)
                        for k in ("ping_interval_s", "dead_after_s", "backoff_initial_s", "backoff_max_s")
                    }
                ),
                "sync": settings.sync.model_copy(
                    update={"max_clock_drift_s": self.settings.sync.max_clock_drift_s}
                ),
            }
        )
        self.sync.apply_settings(self.settings.sync)
        if self.routes is not None:
            self.routes.hop_limit = settings.hop_limit
        for address in old_peers - set(settings.peers):
            scope = self._dialers.pop(address, None)
            if scope is not None and address not in self._hints:
                scope.cancel()
        for address in settings.peers:
            self._start_dialer(address)
        if settings.allowed_nodes:
            for peer, link in list(self.links.items()):
                if peer not in settings.allowed_nodes:
                    link.send(Goodbye("no longer in mesh.allowed_nodes"))
                    link.stream.close()

    def link_views(self) -> list[dict[str, Any]]:
        """Every link with its health and round-trip time."""
        now = trio.current_time()
        views = []
        for peer, link in sorted(self.links.items()):
            view: dict[str, Any] = {
                "peer": peer,
                "name": link.peer.node_name,
                "address": link.peer.address,
                "version": link.peer.version,
                "direction": "outbound" if link.dialer == self.node_id else "inbound",
                "up_s": round(now - link.opened_at, 3),
                "healthy": not link.health.dead(now, self.settings.link.dead_after_s),
                "messages_sent": link.stream.sent,
                "messages_received": link.stream.received,
                "backlog": link.stream.backlog,
                "frames_out": link.frames_out,
                "frames_in": link.frames_in,
                "dropped": dict(link.dropped),
            }
            view.update(link.health.as_dict(now))
            views.append(view)
        return views

    def members(self) -> list[dict[str, Any]]:
        """This node, every linked node, and every node that owns a device here but is not linked."""
        owned = self.sync.index.owned_by
        members = [
            {"node_id": self.node_id, "name": self.node_name, "address": self.address, "self": True,
             "linked": False, "devices": owned.get(self.node_id, 0)}
        ]  # fmt: skip
        for peer, link in sorted(self.links.items()):
            members.append(
                {"node_id": peer, "name": link.peer.node_name, "address": link.peer.address, "self": False,
                 "linked": True, "devices": owned.get(peer, 0)}
            )  # fmt: skip
        members += [
            {
                "node_id": owner,
                "name": "",
                "address": "",
                "self": False,
                "linked": False,
                "devices": owned[owner],
            }
            for owner in sorted(set(owned) - set(self.links) - {self.node_id})
        ]
        return members

    def statistics(self) -> dict[str, Any]:
        """For /api/v1/admin/stats."""
        s = self.stats
        return {
            "node_id": self.node_id,
            "cluster_id": self.settings.cluster_id,
            "address": self.address,
            "listener": asdict(self.listener.stats),
            "links_open": len(self.links),
            "members": self.members(),
            "links": self.link_views(),
            "links_opened": s.opened,
            "links_closed": s.closed,
            "refused": s.refused,
            "security_events": s.security_events,
            "dial_failures": s.dial_failures,
            "duplicate_links": s.duplicates,
            "dialling": sorted(self._dialers),
            "sync": self.sync.statistics(),
            "routing": self.routes.statistics() if self.routes else {},
        }
