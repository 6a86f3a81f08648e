"""Typed readers for SQLite column values (apsw returns int | float | str | bytes | None)."""

from __future__ import annotations


def as_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected TEXT, got {type(value).__name__}")
    return value


def as_opt_str(value: object) -> str | None:
    return None if value is None else as_str(value)


def as_float(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected REAL, got {type(value).__name__}")
    return float(value)


def as_opt_float(value: object) -> float | None:
    return None if value is None else as_float(value)


def as_int(value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"expected INTEGER, got {type(value).__name__}")
    return value


def as_bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"expected BLOB, got {type(value).__name__}")
    return value
