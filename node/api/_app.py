"""The REST API app (quart-trio) and its server task (hypercorn inside the root nursery)."""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGISendCallable
from quart import Response
from quart.typing import ResponseTypes
from quart_schema import OpenAPIProvider, QuartSchema, RequestSchemaValidationError
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.routing.converters import BaseConverter

import node
from node.api import (
    _admin_routes,
    _cluster_routes,
    _lock_routes,
    _queue_routes,
    _registry_routes,
    _turn_routes,
)
from node.api._context import ApiContext
from node.api._problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from node.api._problems import from_http, from_node_error, from_validation, problem
from node.api._schemas import UUID_PATTERN, NoContent, PlainText, Problem
from node.api._security import after_request, before_request
from node.errors import NodeError
from node.logs import logger

log = logger("api")

UUID_PATH_PARAMETERS = frozenset({"device_id", "network_id", "connection_id"})


class _Provider(OpenAPIProvider):
    """Documents bodiless (204), plain-text and problem+json responses, which quart-schema cannot
    express (it documents every model as application/json)."""

    def build_response_object(self, model: Any, headers_model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        if model is NoContent:
            return {"description": "No content"}, {}
        if model is PlainText:
            content = {"text/plain": {"schema": {"type": "string"}}}
            return {"description": PlainText.__doc__ or "", "content": content}, {}
        response, definitions = super().build_response_object(model, headers_model)
        if model is Problem:
            response["content"] = {PROBLEM_CONTENT_TYPE: response["content"].pop("application/json")}
        return response, definitions

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        """Document registry ids in paths as UUIDs (the routes take strings and validate them)."""
        parameter = super().build_path_parameter(name, converter)
        if name in UUID_PATH_PARAMETERS:
            parameter["schema"] = {"type": "string", "pattern": UUID_PATTERN}
        return parameter


class _Request(TrioRequest):
    """Says precisely what is wrong with a body that is not JSON (quart answers a bare 400, or a 500
    for bytes that are not UTF-8), and records whether the body was read to its end."""

    body_consumed = False

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not (force or self.is_json):
            if silent:
                return None
            raise BadRequest(f"request body: expected Content-Type application/json, got {self.mimetype!r}")
        raw = await self.get_data(cache=True, as_text=False)
        self.body_consumed = True
        if isinstance(raw, bytes):
            try:
                raw.decode()
            except UnicodeDecodeError as exc:
                raise BadRequest(f"request body: not UTF-8 (byte {exc.start})") from None
        return await super().get_json(force=force, silent=silent, cache=cache)

    def on_json_loading_failed(self, error: Exception) -> Any:
        raise BadRequest(f"request body: not valid JSON ({error})")


class _HttpConnection(TrioASGIHTTPConnection):
    """Sends the response shielded from the request's own cancellation.

    quart-trio cancels a request's tasks when hypercorn reports its stream closed, and hypercorn does
    so from inside this very send: the cancellation then cut hypercorn's connection close (or its
    keep-alive recycle) half way, leaving a connection that was open but never answered again; the
    client's next request on it hung. hypercorn already shields its socket writes, so the shield
    here only covers its bookkeeping.
    """

    async def _send_response(self, send: ASGISendCallable, response: ResponseTypes) -> None:
        with trio.CancelScope(shield=True):
            await super()._send_response(send, response)


class _App(QuartTrio):
    request_class = _Request
    asgi_http_class = _HttpConnection


def create_app(c: ApiContext) -> QuartTrio:
    """The quart-trio application for this node."""
    app = _App("asgard")
    app.config["ASGARD"] = c
    app.config["MAX_CONTENT_LENGTH"] = c.settings.api.max_body_bytes
    app.config["BODY_TIMEOUT"] = 30
    app.config["PROPAGATE_EXCEPTIONS"] = False
    QuartSchema(
        app,
        info={"title": "Asgard node API", "version": node.__version__},
        openapi_path="/openapi.json",
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        security=[{"bearer": []}],
        openapi_provider_class=_Provider,
    )
    app.before_request(before_request)
    app.after_request(after_request)
    app.register_blueprint(_registry_routes.bp)
    app.register_blueprint(_admin_routes.bp)
    app.register_blueprint(_queue_routes.bp)
    app.register_blueprint(_lock_routes.bp)
    app.register_blueprint(_turn_routes.bp)
    app.register_blueprint(_cluster_routes.bp)
    app.register_error_handler(NodeError, _node_error)
    app.register_error_handler(RequestSchemaValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    return app


async def _node_error(exc: NodeError) -> Response:
    return from_node_error(exc)


async def _validation_error(exc: RequestSchemaValidationError) -> Response:
    return from_validation(exc)


async def _http_error(exc: HTTPException) -> Response:
    return from_http(exc)


async def _internal_error(exc: Exception) -> Response:
    log.error("unhandled error in request", exc_info=exc)
    return problem(500, "internal error; see the node's log", code="internal")


async def serve_api(
    c: ApiContext,
    host: str,
    port: int,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API until `shutdown` is set; reports the base URL (e.g. http://127.0.0.1:7700)."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logger("api.http")
    config.keep_alive_timeout = c.settings.api.keep_alive_timeout_s
    config.graceful_timeout = c.settings.server.shutdown_grace_s
    config.include_server_header = False
    app = create_app(c)

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        task_status.started(binds[0])
