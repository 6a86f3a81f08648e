"""mDNS discovery of other nodes: announce `_asgard._tcp.local.`, browse, resolve, hand out hints.

zeroconf's sync API runs its own thread (DESIGN.md: the one other thread besides the gRPC island);
this module bridges it to Trio: the browser's callbacks post (name, change) into a bounded Trio
channel through the Trio token (a full channel drops and counts, never blocks zeroconf's thread),
and blocking calls (register, resolve, unregister, close) run in `trio.to_thread` with zeroconf's
own deadlines. Only on `mesh.discovery.interfaces` (never every interface; mDNS is off unless
`mesh.discovery.mdns`).

The TXT record carries node_id, version, cluster_id and the mesh, rpc, relay and api ports; the
service's SRV port is the mesh listener's. A resolved service of our cluster that is not ourselves
becomes a *hint* `on_hint("host:mesh_port", node_id)`:
the mesh dials it and trusts it only once it proves the cluster secret. Anyone on the LAN can
announce anything, so TXT values are bounded and parsed defensively, and nothing here is trusted.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from node.clock import WallClock
from node.logs import event, logger
from node.mesh.settings import DiscoverySettings

log = logger("mesh.discovery")
SERVICE_TYPE = "_asgard._tcp.local."
EVENT_QUEUE = 256
MAX_PEERS = 256  # anyone on the LAN can announce: the table of discovered nodes is bounded
MAX_TXT_VALUE = 128
PORT_KEYS = ("mesh", "rpc", "relay", "api")
Hint = Callable[[str, "str | None"], None]


@dataclass(frozen=True, slots=True)
class Announcement:
    """What another node announced (already checked: our cluster, not us, a usable mesh address)."""

    node_id: str
    version: str
    address: str
    ports: dict[str, int]


def txt_properties(node_id: str, version: str, cluster_id: str, ports: Mapping[str, int]) -> dict[str, str]:
    """Our TXT record."""
    props = {"node_id": node_id, "version": version, "cluster_id": cluster_id}
    props.update({key: str(port) for key, port in ports.items() if key in PORT_KEYS})
    return props


def _text(props: Mapping[bytes, bytes | None], key: str) -> str | None:
    value = props.get(key.encode())
    if value is None or len(value) > MAX_TXT_VALUE:
        return None
    return value.decode("utf-8", "replace")


def _port(text: str | None) -> int | None:
    if text is None or not text.isdigit() or not 0 < int(text) < 65536:
        return None
    return int(text)


def read_announcement(
    props: Mapping[bytes, bytes | None], addresses: list[str], *, own_id: str, cluster_id: str
) -> Announcement | str:
    """The announcement in a resolved service, or why it is ignored ("self", "other-cluster", ...)."""
    node_id, cluster = _text(props, "node_id"), _text(props, "cluster_id")
    if not node_id:
        return "malformed"
    if node_id == own_id:
        return "self"
    if cluster != cluster_id:
        return "other-cluster"
    ports = {key: port for key in PORT_KEYS if (port := _port(_text(props, key))) is not None}
    usable = [a for a in addresses if _usable(a)]
    if "mesh" not in ports or not usable:
        return "malformed"
    host = usable[0]
    address = f"[{host}]:{ports['mesh']}" if ":" in host else f"{host}:{ports['mesh']}"
    return Announcement(node_id, _text(props, "version") or "", address, ports)


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_multicast or ip.is_unspecified)


class Discovery:
    """Announce this node and turn other nodes' announcements into hints."""

    def __init__(
        self,
        settings: DiscoverySettings,
        *,
        node_id: str,
        cluster_id: str,
        version: str,
        ports: Mapping[str, int],
        on_hint: Hint,
        clock: WallClock,
        address: str | None = None,
    ) -> None:
        self._settings = settings
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._clock = clock
        self._on_hint = on_hint
        self._address = address or settings.interfaces[0]
        self._props = txt_properties(node_id, version, cluster_id, ports)
        self._mesh_port = ports.get("mesh", 0)
        self.peers: dict[str, tuple[Announcement, float]] = {}
        self._names: dict[str, str] = {}  # service name -> node id
        self._counts = {"hints": 0, "ignored": 0, "resolve_failures": 0, "dropped_events": 0}
        self.announced = False
        self.error: str | None = None
        self._send, self._receive = trio.open_memory_channel[tuple[str, ServiceStateChange]](EVENT_QUEUE)

    def statistics(self) -> dict[str, Any]:
        peers = [
            {
                "node_id": a.node_id,
                "address": a.address,
                "version": a.version,
                "ports": a.ports,
                "seen_at": at,
            }
            for a, at in self.peers.values()
        ]
        doc = {"announced": self.announced, "error": self.error, "peer_count": len(peers), "peers": peers}
        return doc | self._counts

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Announce, browse and resolve until cancelled; unregister and close on the way out."""
        zc = await trio.to_thread.run_sync(
            partial(Zeroconf, interfaces=list(self._settings.interfaces), ip_version=self._ip_version())
        )
        info = self._service_info()
        browser: ServiceBrowser | None = None
        token = trio.lowlevel.current_trio_token()
        try:
            task_status.started()
            try:
                # Probing and announcing take ~1.7 s (RFC 6762 §8); a conflict picks another name.
                await trio.to_thread.run_sync(partial(zc.register_service, info, allow_name_change=True))
                self.announced = True
                event(log, 20, "mdns announced", name=info.name, interfaces=list(self._settings.interfaces))
                handler = partial(self._from_zeroconf_thread, token)
                browser = await trio.to_thread.run_sync(
                    partial(ServiceBrowser, zc, SERVICE_TYPE, handlers=[handler])
                )
            except Exception as exc:  # mDNS is a convenience: the node runs on without it
                self.error = repr(exc)[:300]
                event(log, 40, "mdns discovery failed; static peers only", error=self.error)
                return
            async for name, change in self._receive:
                await self._handle(zc, name, change)
        finally:
            # Bounded even if zeroconf hangs: the worker is abandoned after 5 s (a daemon thread).
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await trio.to_thread.run_sync(self._close, zc, browser, info, abandon_on_cancel=True)

    # ------------------------------------------------------------ zeroconf thread -> Trio

    def _from_zeroconf_thread(
        self,
        token: trio.lowlevel.TrioToken,
        *,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        with suppress(trio.RunFinishedError):  # the node has stopped; the browser is being cancelled
            token.run_sync_soon(self._post, name, state_change)

    def _post(self, name: str, change: ServiceStateChange) -> None:
        try:
            self._send.send_nowait((name, change))
        except trio.WouldBlock:
            self._counts["dropped_events"] += 1  # the next re-announcement brings it back
        except trio.ClosedResourceError:
            pass

    # ------------------------------------------------------------ Trio side

    async def _handle(self, zc: Zeroconf, name: str, change: ServiceStateChange) -> None:
        if change is ServiceStateChange.Removed:
            node_id = self._names.pop(name, None)
            if node_id is not None and self.peers.pop(node_id, None) is not None:
                event(log, 20, "mdns peer gone", node_id=node_id)
            return
        found = await self._resolve(zc, name)
        if found is None:
            self._counts["resolve_failures"] += 1
            return
        if isinstance(found, str):
            if found != "self":
                self._counts["ignored"] += 1
                event(log, 10, "mdns announcement ignored", name=name[:200], reason=found)
            return
        known = self.peers.get(found.node_id)
        full = (known is None and len(self.peers) >= MAX_PEERS) or (
            name not in self._names and len(self._names) >= MAX_PEERS
        )
        if full:
            self._counts["ignored"] += 1
            return
        self._names[name] = found.node_id
        self.peers[found.node_id] = (found, self._clock.now())
        if known is None or known[0].address != found.address:
            self._counts["hints"] += 1
            event(log, 20, "mdns peer found", node_id=found.node_id, address=found.address)
            self._on_hint(found.address, found.node_id)

    async def _resolve(self, zc: Zeroconf, name: str) -> Announcement | str | None:
        """Resolve `name` within the deadline; None when it cannot be resolved."""
        timeout_ms = int(self._settings.resolve_timeout_s * 1000)
        try:
            info = await trio.to_thread.run_sync(partial(zc.get_service_info, SERVICE_TYPE, name, timeout_ms))
            if info is None:
                return None
            props, addresses = info.properties, info.parsed_addresses()
        except Exception as exc:  # zeroconf parsing a stranger's records: never fatal to the node
            event(log, 30, "mdns resolve failed", name=name[:200], error=repr(exc)[:200])
            return None
        return read_announcement(props, addresses, own_id=self.node_id, cluster_id=self.cluster_id)

    def _service_info(self) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            f"{self.node_id}.{SERVICE_TYPE}",
            port=self._mesh_port,
            properties=self._props,
            server=f"asgard-{self.node_id[:8]}.local.",
            addresses=[socket.inet_pton(_family(self._address), self._address)],
        )

    def _ip_version(self) -> IPVersion:
        versions = {ipaddress.ip_address(a).version for a in self._settings.interfaces}
        if versions == {4}:
            return IPVersion.V4Only
        return IPVersion.V6Only if versions == {6} else IPVersion.All

    def _close(self, zc: Zeroconf, browser: ServiceBrowser | None, info: ServiceInfo) -> None:
        """In a worker thread: stop browsing, say goodbye (TTL 0, RFC 6762 §10.1), close sockets."""
        if browser is not None:
            browser.cancel()
        if self.announced:
            zc.unregister_service(info)
            self.announced = False
        zc.close()


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET
