"""The mesh of nodes: authenticated peer links, registry sync, cross-node routing (docs/mesh.md)."""

from node.mesh.settings import MeshSettings

__all__ = ["MeshSettings"]
