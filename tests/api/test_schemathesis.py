"""schemathesis against /openapi.json of a live node: no 5xx, and every status code, content type,
header and body conforms to the document, for an admin, a viewer (wrong role for every write) and
no token at all.

schemathesis runs as its own process (its CLI), so its synchronous HTTP client does not block the Trio
loop that serves it. The example counts are bounded so the three runs take well under a minute; set
ASGARD_SCHEMATHESIS_SEED to replay another seed, ASGARD_SCHEMATHESIS_EXAMPLES to search longer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.api.helpers import StartNode, create_network, register

SEED = os.environ.get("ASGARD_SCHEMATHESIS_SEED", "20261125")
EXAMPLES = os.environ.get("ASGARD_SCHEMATHESIS_EXAMPLES", "")
RUN_TIMEOUT_S = 120

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
    ]
)

# Generous limits: the point is the API's answers, not the limiter (tested in test_limits.py).
UNLIMITED = {
    "api.rate_per_token": 1e6,
    "api.burst_per_token": 1_000_000,
    "api.rate_per_ip": 1e6,
    "api.burst_per_ip": 1_000_000,
}

# (who, phases, examples per operation, extra checks)
RUNS = {
    "admin": ("coverage,fuzzing,stateful", "4", ",ignored_auth"),
    "viewer": ("fuzzing", "3", ""),
    "anonymous": ("fuzzing", "2", ""),
}


@pytest.mark.slow
async def test_schemathesis_finds_nothing(start_node: StartNode, tmp_path: Path) -> None:
    node = await start_node(**UNLIMITED)
    admin = node.admin()
    # Some real objects, so that the stateful phase and the links have something to find.
    net = await create_network(admin)
    await register(admin, net)
    tokens = {"admin": node.admin_token, "viewer": (await node.token("viewer"))[0], "anonymous": None}
    outputs: dict[str, tuple[int, str]] = {}

    async def run(who: str) -> None:
        outputs[who] = await schemathesis(node.url, tmp_path / who, tokens[who], *RUNS[who])

    # The three runs overlap: each is a separate process, and the node serves them all.
    async with trio.open_nursery() as nursery:
        for who in RUNS:
            nursery.start_soon(run, who)
    for who, (returncode, output) in outputs.items():
        assert returncode == 0, f"schemathesis as {who}:\n{output[-6000:]}"
        assert " passed" in output, output[-2000:]


async def schemathesis(
    url: str, cwd: Path, token: str | None, phases: str, examples: str, extra_checks: str
) -> tuple[int, str]:
    """Run the schemathesis CLI against `url`/openapi.json; returns (exit code, output)."""
    cwd.mkdir()
    args = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        CHECKS + extra_checks,
        "--phases",
        phases,
        "--max-examples",
        EXAMPLES or examples,
        "--seed",
        SEED,
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-shrink",
    ]
    if token is not None:
        args += ["--header", f"Authorization: Bearer {token}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASGARD_", "SCHEMATHESIS_"))}
    with trio.fail_after(RUN_TIMEOUT_S):
        done = await trio.run_process(
            args, cwd=cwd, env=env, capture_stdout=True, stderr=subprocess.STDOUT, check=False
        )
    return done.returncode, done.stdout.decode(errors="replace")
