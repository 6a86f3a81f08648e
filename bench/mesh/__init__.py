"""Mesh benchmark: cross-node device round trip next to the same-node one."""
