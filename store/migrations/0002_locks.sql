-- 0002: the lock service's durable state: fencing counters (never decrease) and held leases.

CREATE TABLE lock_counters (
    resource         TEXT PRIMARY KEY,
    reserved_through INTEGER NOT NULL CHECK (reserved_through >= 0)
) WITHOUT ROWID;

CREATE TABLE lock_leases (
    resource        TEXT NOT NULL,
    token           INTEGER NOT NULL,
    owner           TEXT NOT NULL,
    session         TEXT NOT NULL,
    mode            TEXT NOT NULL CHECK (mode IN ('exclusive', 'shared')),
    priority        INTEGER NOT NULL,
    lease_s         REAL NOT NULL,
    expires_at_unix REAL NOT NULL,
    PRIMARY KEY (resource, token)
) WITHOUT ROWID;
