"""The gRPC router as a service of the node: `NodeRpc.serve(host, shutdown=...)`.

Start-up: open the island, chain Heimdall behind the node's authenticator when `[rpc.heimdall]`
has an address, start the router on the island, mirror the service board into the health table
(every gRPC service serving while the node service it needs runs), mark `rpc` running and report
"host:port". Shutdown (`shutdown` set): every health status goes NOT_SERVING at once, then the
router drains (streams end with UNAVAILABLE, unary calls get `rpc.shutdown_grace_s`) and the
island's thread is joined before `serve` returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from node.rpc._health import HealthState
from node.rpc._island import open_island
from node.rpc._node_caps import ServiceBoard
from node.rpc.backend import Authenticator
from node.rpc.clients._base import close_channels
from node.rpc.clients.heimdall import GrpcHeimdall, HeimdallAuthenticator
from node.rpc.service import RpcServer
from node.rpc.settings import RpcSettings

if TYPE_CHECKING:
    from node.rpc.node_backend import NodeBackend


class NodeRpc:
    """The node's gRPC router: serve it, read its statistics, apply live settings."""

    def __init__(
        self, settings: RpcSettings, backend: NodeBackend, authenticator: Authenticator, board: ServiceBoard
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.board = board
        self.health = HealthState()
        self._authenticator = authenticator
        self._server: RpcServer | None = None

    async def serve(
        self, host: str, *, shutdown: trio.Event, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until `shutdown` is set; reports "host:port"."""
        settings = self.settings.model_copy(update={"host": host})
        async with open_island(
            name="asgard-rpc",
            max_in_flight=settings.max_in_flight,
            window=settings.stream_window,
            stop_timeout_s=settings.stop_timeout_s,
        ) as island:
            authenticator = self._authenticator
            heimdall = None
            if settings.heimdall.address:
                heimdall = GrpcHeimdall(island, settings.heimdall)
                authenticator = HeimdallAuthenticator(authenticator, heimdall, settings.heimdall)
            self._server = RpcServer(settings, self.backend, authenticator, health=self.health, island=island)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.backend.run, name="rpc-capabilities")
                    bound_host, port = await nursery.start(self._server.serve)
                    address = f"[{bound_host}]:{port}" if ":" in bound_host else f"{bound_host}:{port}"
                    self.board.attach_health(self.health)
                    self.board.set("rpc", "running", address=address, capability="grpc")
                    task_status.started(address)
                    await shutdown.wait()
                    self.board.stop_all()
                    self.health.set_all("not_serving")
                    nursery.cancel_scope.cancel()
            finally:
                if heimdall is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(settings.stop_timeout_s):
                        await island.run(close_channels, heimdall.channel)

    def apply_settings(self, settings: RpcSettings) -> None:
        """Apply the live fields (see node.rpc.settings); the address keeps its running value."""
        self.settings = settings
        if self._server is not None:
            host = self._server.address[0] if self._server.address else settings.host
            self._server.apply_settings(settings.model_copy(update={"host": host}))

    def statistics(self) -> dict[str, Any]:
        """Bridge counters, calls in the gate, and the health table."""
        stats: dict[str, Any] = dict(self._server.statistics()) if self._server is not None else {}
        stats["health"] = self.health.snapshot()
        return stats
