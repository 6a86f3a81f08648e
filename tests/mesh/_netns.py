"""The network namespace of the mDNS tests (a fixture imported by the test modules that need it).

Creating a namespace needs root (CAP_SYS_ADMIN); we run as root here and in CI. Without the
permission the test is skipped with the reason on a developer machine and fails when CI=true
(marker `netns`). Inside the namespace only `lo` exists; the fixture brings it up and turns
multicast on, so mDNS traffic never leaves the namespace. If multicast then did not work the tests
fail rather than skip: it works on Linux loopback in a fresh namespace, so a failure is a real one.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture
def netns(require_program: Callable[[str], str]) -> Iterator[str]:
    """A fresh network namespace with only `lo`, up and multicast-capable; deleted afterwards."""
    ip = require_program("ip")
    name = f"asgard-mdns-{os.getpid()}-{secrets.token_hex(3)}"
    created = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True, check=False)
    if created.returncode != 0:
        message = f"cannot create a network namespace (needs root): {created.stderr.strip()}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        for args in (["link", "set", "lo", "up"], ["link", "set", "lo", "multicast", "on"]):
            subprocess.run([ip, "-n", name, *args], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=False, capture_output=True)
