"""TURN long-term users kept in the node's store (asked after the config file's users)."""

from __future__ import annotations

import re

from node.clock import WallClock
from node.errors import InvalidInput, NotFound
from node.storage import Storage
from node.turn.credentials import KeyMaterial, derive_keys
from store import turn_users as rows
from wire.stun import userhash

USERNAME_RE = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")  # no ':' (that separates the TURN REST form)
MIN_PASSWORD_CHARS = 12


class StoreUsers:
    """`UserSource` and `UserHashSource` over the `turn_users` table (inline point reads)."""

    def __init__(self, storage: Storage, clock: WallClock) -> None:
        self._storage = storage
        self._clock = clock

    def lookup(self, username: str, realm: str) -> KeyMaterial | None:
        user = self._storage.read(rows.get, username, realm)
        return None if user is None else KeyMaterial(md5=user.md5_key, sha256=user.sha256_key)

    def lookup_userhash(self, hashed: bytes, realm: str) -> tuple[str, KeyMaterial] | None:
        user = self._storage.read(rows.by_userhash, hashed, realm)
        return (
            None if user is None else (user.username, KeyMaterial(md5=user.md5_key, sha256=user.sha256_key))
        )

    async def put(self, username: str, realm: str, password: str) -> rows.TurnUser:
        """Create or replace a user; only the derived keys are stored.

        Raises:
            InvalidInput: a bad user name or a password shorter than 12 characters.
        """
        if not USERNAME_RE.match(username):
            raise InvalidInput("username: 1 to 128 of letters, digits and . _ @ + - (no ':')")
        if len(password) < MIN_PASSWORD_CHARS or len(password) > 256:
            raise InvalidInput(f"password: {MIN_PASSWORD_CHARS} to 256 characters")
        keys = derive_keys(username, realm, password)
        assert keys.md5 is not None
        assert keys.sha256 is not None
        user = rows.TurnUser(
            username, realm, keys.md5, keys.sha256, userhash(username, realm), self._clock.now()
        )
        await self._storage.write(rows.put, user)
        return user

    def list(self) -> list[rows.TurnUser]:
        return self._storage.read(rows.list_users)

    async def delete(self, username: str, realm: str) -> None:
        if not await self._storage.write(rows.delete, username, realm):
            raise NotFound(f"TURN user {username!r} not found")
