"""Suite-wide fixtures and rules.

External programs (coturn's tools, etcd, chromium): a test asks for one through `require_program`.
When it is missing the test is skipped on a developer machine, but fails when `CI=true`: CI installs
them (scripts/install-system-deps), so a missing one there is a broken setup, not a reason to skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest


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
