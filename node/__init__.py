"""Asgard node: everything that does I/O (app, config, relay, rpc, turn, locks, api, mesh, storage)."""

__version__ = "0.1.0"
