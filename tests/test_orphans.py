"""The suite kills what an earlier, killed test session left running (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import OWNER_VARIABLE, owner_token, reap_orphans

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def _sleeper(owner: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, OWNER_VARIABLE: owner}
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)


def test_processes_of_a_dead_session_are_killed_and_live_ones_kept() -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_owner = f"{int(finished.stdout)}:0"  # that pid has exited (and no process starts at tick 0)
    orphan, kept = _sleeper(dead_owner), _sleeper(owner_token(os.getpid()))
    try:
        assert orphan.pid in reap_orphans()
        assert orphan.wait(timeout=10) == -9
        assert kept.poll() is None
    finally:
        for proc in (orphan, kept):
            proc.kill()
            proc.wait(timeout=10)


def test_this_session_marks_what_it_starts() -> None:
    assert os.environ[OWNER_VARIABLE] == owner_token(os.getpid())
