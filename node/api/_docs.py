"""A self-contained HTML API reference rendered from the generated OpenAPI document."""

from __future__ import annotations

import html
import json
from typing import Any

from quart import current_app

METHODS = ("get", "post", "put", "patch", "delete")
STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#1d2330}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ccd}code,pre{font:13px ui-monospace,monospace}
.op{border:1px solid #dde;border-radius:6px;margin:.6rem 0;padding:.4rem .8rem}
.m{display:inline-block;min-width:4.2rem;font-weight:700;text-transform:uppercase}
.get{color:#0a6}.post{color:#06c}.put,.patch{color:#a60}.delete{color:#c22}
details pre{background:#f5f6fa;padding:.6rem;overflow:auto;max-height:24rem}
"""


def render_docs() -> str:
    spec: dict[str, Any] = current_app.extensions["QUART_SCHEMA"].openapi_provider.schema()
    info = spec.get("info", {})
    title = html.escape(info.get("title", "API"))
    version = html.escape(str(info.get("version", "")))
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>{title}</title><style>{STYLE}</style>",
        f"<h1>{title} <small>{version}</small></h1>",
        "<p>Every endpoint except /healthz and /readyz needs <code>Authorization: Bearer asg_...</code>. "
        "Errors are RFC 9457 problem details. Machine-readable: <a href=/openapi.json>/openapi.json</a>.</p>",
    ]
    by_tag: dict[str, list[str]] = {}
    for path, item in sorted(spec.get("paths", {}).items()):
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append(_operation(method, path, op))
    for tag, ops in sorted(by_tag.items()):
        parts.append(f"<h2>{html.escape(tag)}</h2>")
        parts.extend(ops)
    schemas = spec.get("components", {}).get("schemas", {})
    parts.append("<h2>schemas</h2>")
    for name, schema in sorted(schemas.items()):
        parts.append(
            f"<details><summary><code>{html.escape(name)}</code></summary>"
            f"<pre>{html.escape(json.dumps(schema, indent=2))}</pre></details>"
        )
    return "".join(parts)


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    summary = html.escape(op.get("summary") or op.get("description") or "")
    params = ", ".join(
        f"<code>{html.escape(p['name'])}</code> ({html.escape(p.get('in', ''))})"
        for p in op.get("parameters", [])
    )
    codes = ", ".join(str(code) for code in sorted(op.get("responses", {}), key=str))
    return (
        f"<div class=op><span class='m {method}'>{method}</span> <code>{html.escape(path)}</code>"
        f"<div>{summary}</div>"
        + (f"<div>Parameters: {params}</div>" if params else "")
        + f"<div>Responses: {html.escape(codes)}</div></div>"
    )
