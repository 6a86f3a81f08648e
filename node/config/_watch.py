"""Hot reload: watch the config file, apply what may change live, report what needs a restart.

The file is polled (stat + content hash) rather than watched with inotify: it is portable, costs
one stat per interval and also notices edits made by replacing the file. A broken edit never
replaces the running configuration; the reason is logged and kept for /api/v1/admin/stats.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from node.config._load import SettingsError, _get, _set_path, changed_fields, live_fields, load_settings
from node.config._root import Settings
from node.logs import event, logger

log = logger("config")


def merge_live(old: Settings, new: Settings) -> tuple[Settings, set[tuple[str, ...]], set[tuple[str, ...]]]:
    """(effective settings, keys applied live, keys that need a restart)."""
    changed = changed_fields(old, new)
    live = {key for key in changed if any(key[: len(p)] == p for p in live_fields(Settings))}
    merged = old.model_dump()
    fresh = new.model_dump()
    for key in live:
        _set_path(merged, key, _get(fresh, key))
    return Settings.model_validate(merged), live, changed - live


class ConfigWatcher:
    """Polls `path`; on a valid change calls `apply(effective_settings)`."""

    def __init__(
        self,
        path: Path,
        current: Settings,
        apply: Callable[[Settings], None],
        *,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.current = current
        self._apply = apply
        self._environ = dict(os.environ if environ is None else environ)
        self._overrides = dict(overrides or {})
        self.observers: list[Callable[[bool, str | None], None]] = []
        self._fingerprint = self._read_fingerprint()
        self.pending_restart: list[str] = []
        self.last_error: str | None = None
        self.reloads = 0

    def _read_fingerprint(self) -> bytes | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return None

    async def run(self, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s)
            self.check()

    def check(self) -> bool:
        """Reload when the file changed; returns True when something was applied."""
        fingerprint = self._read_fingerprint()
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        try:
            new = load_settings(self.path, environ=self._environ, overrides=self._overrides).settings
        except SettingsError as exc:
            self.last_error = "; ".join(exc.problems)
            event(
                log,
                40,
                "config change rejected; keeping the running configuration",
                path=str(self.path),
                problems=exc.problems,
            )
            self._notify(False)
            return False
        self.last_error = None
        effective, applied, restart = merge_live(self.current, new)
        self.pending_restart = sorted(".".join(k) for k in restart)
        if restart:
            event(log, 30, "config change needs a restart to take effect", keys=self.pending_restart)
        if applied:
            self.current = effective
            self._apply(effective)
            self.reloads += 1
            event(log, 20, "config reloaded", applied=sorted(".".join(k) for k in applied))
        self._notify(bool(applied))
        return bool(applied)

    def _notify(self, applied: bool) -> None:
        for observer in self.observers:
            observer(applied, self.last_error)

    def statistics(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "reloads": self.reloads,
            "pending_restart": self.pending_restart,
            "last_error": self.last_error,
        }
