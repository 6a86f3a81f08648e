"""Structured logging: JSON lines to a rotating file, readable lines on the console, and an
in-memory ring of recent records for /api/v1/admin/logs. The level can change while running.

Code logs with stdlib `logging` and passes structured fields as `extra={"fields": {...}}`
(helper: `event(logger, level, message, **fields)`). Secrets are never passed as fields.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.config import LoggingSettings

ROOT = "asgard"
LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One structured record as kept in the ring and written to the file."""

    seq: int
    at: float
    level: str
    logger: str
    message: str
    fields: dict[str, Any]


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log `message` with structured `fields`."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields}, stacklevel=2)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(getattr(record, "fields", {}) or {})
    if record.exc_info and record.exc_info[0] is not None:
        fields["exception"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "at": record.created,
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
                **_fields(record),
            },
            default=str,
            separators=(",", ":"),
        )


class ConsoleFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL logger: message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items() if k != "exception")
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        fields = _fields(record)
        return f"{line}\n{fields['exception']}" if "exception" in fields else line


class RingHandler(logging.Handler):
    """Keeps the newest records in memory, thread-safe (the store and gRPC threads log too)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._ring: deque[LogRecord] = deque(maxlen=size)
        self._seq = 0
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._mutex:
            self._seq += 1
            self._ring.append(
                LogRecord(
                    self._seq,
                    record.created,
                    record.levelname,
                    record.name,
                    record.getMessage(),
                    _fields(record),
                )
            )

    def resize(self, size: int) -> None:
        with self._mutex:
            self._ring = deque(self._ring, maxlen=size)

    def query(self, *, min_level: str | None, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """Newest first: (total matching, one page of records as dicts)."""
        floor = LEVELS.get(min_level or "DEBUG", logging.DEBUG)
        with self._mutex:
            matching = [r for r in reversed(self._ring) if LEVELS.get(r.level, 0) >= floor]
        page = matching[offset : offset + limit]
        return len(matching), [asdict(r) for r in page]


class Logs:
    """The node's logging setup; `apply` changes it live."""

    def __init__(self, settings: LoggingSettings, data_dir: Path) -> None:
        self.ring = RingHandler(settings.ring_size)
        self._root = logging.getLogger(ROOT)
        self._handlers: list[logging.Handler] = [self.ring]
        if settings.console:
            console = logging.StreamHandler(sys.stderr)
            console.setFormatter(ConsoleFormatter())
            self._handlers.append(console)
        if settings.file is not None:
            path = settings.file if settings.file.is_absolute() else data_dir / settings.file
            path.parent.mkdir(parents=True, exist_ok=True)
            rotating = logging.handlers.RotatingFileHandler(
                path,
                maxBytes=settings.file_max_bytes,
                backupCount=settings.file_backups,
                encoding="utf-8",
            )
            rotating.setFormatter(JsonFormatter())
            self._handlers.append(rotating)
        for handler in self._handlers:
            self._root.addHandler(handler)
        self._root.propagate = False
        self.apply(settings)

    def apply(self, settings: LoggingSettings) -> None:
        """Apply the live-changeable parts (the level)."""
        self._root.setLevel(LEVELS[settings.level])

    def close(self) -> None:
        for handler in self._handlers:
            self._root.removeHandler(handler)
            handler.close()


def logger(name: str) -> logging.Logger:
    """A logger under the node's root (`asgard.<name>`)."""
    return logging.getLogger(f"{ROOT}.{name}")
