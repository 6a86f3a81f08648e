"""Suite-wide fixtures and rules.

External programs (coturn's tools, etcd, chromium): a test asks for one through `require_program`.
When it is missing the test is skipped on a developer machine, but fails when `CI=true`: CI installs
them (scripts/install-system-deps), so a missing one there is a broken setup, not a reason to skip.

Processes left behind: every process a test starts inherits `PYTEST_ASGARD_OWNER` (this session's
pid and start time). Fixtures stop what they start, but a session that is itself killed (SIGKILL,
a CI timeout) cannot; the next session kills every process whose owner session is gone before it
starts, and says so in its header.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest

OWNER_VARIABLE = "PYTEST_ASGARD_OWNER"


def _start_time(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot; with the pid, an identity)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5)


def owner_token(pid: int) -> str:
    return f"{pid}:{_start_time(pid)}"


def _alive(token: str) -> bool:
    pid, _, start = token.partition(":")
    return pid.isdigit() and _start_time(int(pid)) == start


def reap_orphans() -> list[int]:
    """Kill the processes whose owner test session has ended; their pids."""
    key = OWNER_VARIABLE.encode() + b"="
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        owner = next((item[len(key) :] for item in environ.split(b"\0") if item.startswith(key)), None)
        if owner is not None and not _alive(owner.decode(errors="replace")):
            with suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def pytest_configure(config: pytest.Config) -> None:
    if sys.platform == "linux":
        config.stash[_REAPED] = reap_orphans()
        os.environ[OWNER_VARIABLE] = owner_token(os.getpid())


def pytest_report_header(config: pytest.Config) -> str | None:
    reaped = config.stash.get(_REAPED, [])
    return (
        f"killed {len(reaped)} process(es) an earlier, killed test session left: {reaped}" if reaped else None
    )


_REAPED = pytest.StashKey[list[int]]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture
def require_program() -> Callable[[str], str]:
    """Return a function mapping a program name to its path, or skip/fail when it is missing."""

    def find(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            message = f"{name} is not installed (scripts/install-system-deps installs it)"
            if _in_ci():
                pytest.fail(message)
            pytest.skip(message)
        return path

    return find
