"""The REST API (quart-trio on hypercorn): registry, tokens, admin, health, metrics, docs."""

from node.api._app import create_app, serve_api
from node.api._context import ApiContext

__all__ = ["ApiContext", "create_app", "serve_api"]
