"""Token service (authenticate, create, list, revoke) and the audit log writer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import apsw
import trio

from node.auth import Principal, Role, check_token, make_token_row, principal_of
from node.clock import WallClock
from node.errors import Conflict, NotFound
from node.logs import event, logger
from node.storage import Storage
from store import audit as audit_rows
from store import records
from store import tokens as token_rows

log = logger("auth")

AUDIT_BUFFER_MAX = 10_000
FLUSH_INTERVAL_S = 0.5


class TokenService:
    """Checks bearer tokens inline (one indexed read) and manages them through the store.

    Every request reads the token row, so revocation takes effect on the next request.
    `last_used_at` is gathered in memory and written in batches by `run`.
    """

    def __init__(self, storage: Storage, clock: WallClock) -> None:
        self._storage = storage
        self._clock = clock
        self._used: dict[str, float] = {}

    def authenticate(self, token: str) -> Principal:
        """Raises Unauthenticated (malformed, unknown, revoked, expired)."""
        row = self._storage.read(check_token, token, self._clock.now())
        self._used[row.token_id] = self._clock.now()
        return principal_of(row)

    async def create(
        self,
        *,
        name: str,
        role: Role,
        device_id: str | None = None,
        networks: Sequence[str] = (),
        expires_at: float | None = None,
    ) -> tuple[str, records.Token]:
        """Returns (the secret, shown once; the stored row)."""
        secret, row = make_token_row(
            name=name,
            role=role,
            device_id=device_id,
            networks=networks,
            now=self._clock.now(),
            expires_at=expires_at,
        )
        await self._storage.write(token_rows.insert_token, row)
        event(log, 20, "token created", token_id=row.token_id, role=role.value, token_name=name)
        return secret, row

    def list(self) -> list[records.Token]:
        return self._storage.read(token_rows.list_tokens)

    def get(self, token_id: str) -> records.Token:
        row = self._storage.read(token_rows.get_token, token_id)
        if row is None:
            raise NotFound(f"token {token_id} not found")
        return row

    async def revoke(self, token_id: str) -> records.Token:
        """Revoke now; refuses to revoke the last live admin token (that would lock everyone out)."""
        await self._storage.write(_revoke, token_id, self._clock.now())
        event(log, 20, "token revoked", token_id=token_id)
        return self.get(token_id)

    async def run(self) -> None:
        """Write out last_used_at times periodically."""
        try:
            while True:
                await trio.sleep(5.0)
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    async def flush(self) -> None:
        if self._used:
            used, self._used = self._used, {}
            await self._storage.write(token_rows.touch_tokens, list(used.items()))


def _revoke(conn: apsw.Connection, token_id: str, now: float) -> None:
    row = token_rows.get_token(conn, token_id)
    if row is None:
        raise NotFound(f"token {token_id} not found")
    if row.revoked_at is not None:
        return
    if row.role == Role.ADMIN and token_rows.count_active_admins(conn, now) <= 1:
        raise Conflict("this is the last live admin token; create another admin token first")
    token_rows.revoke_token(conn, token_id, now)


def bootstrap_admin(conn: apsw.Connection, now: float) -> str | None:
    """On first start (no token at all), create an admin token and return its secret, else None."""
    if token_rows.list_tokens(conn):
        return None
    secret, row = make_token_row(
        name="bootstrap admin", role=Role.ADMIN, device_id=None, networks=(), now=now, expires_at=None
    )
    token_rows.insert_token(conn, row)
    return secret


@dataclass
class AuditLog:
    """Buffers audit entries and writes them in batches; never holds a secret."""

    storage: Storage
    clock: WallClock
    dropped: int = 0

    def __post_init__(self) -> None:
        self._pending: list[records.AuditEntry] = []
        self._wake = trio.Event()

    def record(
        self,
        *,
        actor: str,
        action: str,
        target: str = "",
        outcome: str,
        status: int | None = None,
        client: str = "",
        detail: str = "",
    ) -> None:
        if len(self._pending) >= AUDIT_BUFFER_MAX:
            self.dropped += 1
            return
        self._pending.append(
            records.AuditEntry(
                id=0,
                at=self.clock.now(),
                actor=actor,
                action=action[:200],
                target=target[:200],
                outcome=outcome,
                status=status,
                client=client[:100],
                detail=detail[:500],
            )
        )
        if len(self._pending) >= 100:
            self._wake.set()

    async def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            await self.storage.write(audit_rows.append, batch)

    def query(self, **filters: object) -> list[records.AuditEntry]:
        return self.storage.read(audit_rows.query, **filters)  # type: ignore[arg-type]

    async def run(self) -> None:
        try:
            while True:
                with trio.move_on_after(FLUSH_INTERVAL_S):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()
