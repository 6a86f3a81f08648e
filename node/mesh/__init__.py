"""The mesh of nodes: authenticated peer links, registry sync, cross-node routing (docs/mesh.md)."""

from typing import TYPE_CHECKING, Any

from node.mesh.settings import MeshSettings

if TYPE_CHECKING:
    from node.mesh.service import Mesh

__all__ = ["Mesh", "MeshSettings"]


def __getattr__(name: str) -> Any:
    if name == "Mesh":  # imported on use: the service pulls in h2 and the link modules
        from node.mesh.service import Mesh

        return Mesh
    raise AttributeError(name)
