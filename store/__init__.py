"""The SQLite store (apsw): schema, migrations and queries. Synchronous; knows nothing of the node."""

from store._db import integrity_ok, latest_version, migrate, migrations, open_db, schema_version

__all__ = ["integrity_ok", "latest_version", "migrate", "migrations", "open_db", "schema_version"]
