"""Helpers shared by the route modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from quart import Response
from quart_schema import document_response

from node.api._schemas import Problem
from node.api._security import ctx
from node.errors import InvalidInput
from node.registry import _validate as v

F = TypeVar("F", bound=Callable[..., object])

COMMON_PROBLEMS = (400, 401, 403, 404, 413, 429)


def problems(*extra: int) -> Callable[[F], F]:
    """Document the problem responses a route can give (the common ones plus `extra`)."""

    def decorate(func: F) -> F:
        for status in (*COMMON_PROBLEMS, *extra):
            func = document_response(Problem, status)(func)
        return func

    return decorate


def page_limit(requested: int | None) -> int:
    api = ctx().settings.api
    if requested is None:
        # The settings do not tie the default to the maximum; the maximum wins.
        return min(api.page_size_default, api.page_size_max)
    if requested > api.page_size_max:
        raise InvalidInput(f"limit: at most {api.page_size_max}")
    return requested


def cursor(value: str | None) -> str | None:
    return None if value is None else v.uuid_id(value, "cursor")


def no_content() -> Response:
    """A fresh 204 per request: after_request adds per-request headers, and a body-less quart Response
    iterates its body through asyncio, which fails under Trio; an empty bytes body does not."""
    return Response(b"", status=204)
