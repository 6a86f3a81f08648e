"""The root settings object: one section per service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from node._section import Section
from node.config._model import (
    ApiSettings,
    LoggingSettings,
    RegistrySettings,
    ServerSettings,
    StoreSettings,
)
from node.locks.settings import LockSettings
from node.mesh.settings import MeshSettings
from node.relay.settings import RelaySettings
from node.rpc.settings import RpcSettings
from node.turn.settings import TurnSettings


class Settings(Section):
    """Everything the node can be configured with. Each attribute is a TOML section."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    locks: LockSettings = Field(default_factory=LockSettings)
    turn: TurnSettings = Field(default_factory=TurnSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    rpc: RpcSettings = Field(default_factory=RpcSettings)
    mesh: MeshSettings = Field(default_factory=MeshSettings)

    def store_path(self) -> Path:
        """The database file this node uses."""
        return self.store.path or self.server.data_dir / "asgard.db"

    def host_for(self, host: str | None) -> str:
        """A service's listen address: its own, or the server-wide default."""
        return host or self.server.host
