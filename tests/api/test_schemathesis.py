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
    "admin": ("coverage,fuzzing,stateful", "6", ",ignored_auth"),
    "viewer": ("fuzzing,stateful", "4", ""),
    "anonymous": ("fuzzing", "2", ""),
}


@pytest.mark.slow
@pytest.mark.parametrize("who", sorted(RUNS))
async def test_schemathesis_finds_nothing(start_node: StartNode, tmp_path: Path, who: str) -> None:
    node = await start_node(**UNLIMITED)
    admin = node.admin()
    # Some real objects, so that the stateful phase and the links have something to find.
    net = await create_network(admin)
    await register(admin, net)
    phases, examples, extra_checks = RUNS[who]
    args = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{node.url}/openapi.json",
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
    if who != "anonymous":
        token = node.admin_token if who == "admin" else (await node.token(who))[0]
        args += ["--header", f"Authorization: Bearer {token}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASGARD_", "SCHEMATHESIS_"))}
    with trio.fail_after(RUN_TIMEOUT_S):
        done = await trio.run_process(
            args, cwd=tmp_path, env=env, capture_stdout=True, stderr=subprocess.STDOUT, check=False
        )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output[-6000:]
    assert " passed" in output, output[-2000:]
