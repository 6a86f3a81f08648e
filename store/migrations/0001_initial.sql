-- 0001: the plan's registry tables, memberships, API tokens, audit log, node metadata.
-- Times are Unix seconds (REAL, wall clock). UUIDs are canonical lowercase text.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE networks (
    network_id      TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    created_at      REAL NOT NULL,
    owner_device_id TEXT
) WITHOUT ROWID;

CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY,
    network_id    TEXT NOT NULL REFERENCES networks (network_id),
    name          TEXT NOT NULL DEFAULT '',
    world_type    TEXT NOT NULL,
    capabilities  TEXT NOT NULL DEFAULT '[]',   -- JSON array of capability names
    hardware_spec TEXT NOT NULL DEFAULT '{}',   -- JSON object
    registered_at REAL NOT NULL,
    updated_at    REAL NOT NULL,
    last_seen     REAL NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('online', 'inactive', 'offline'))
) WITHOUT ROWID;
CREATE INDEX devices_by_network ON devices (network_id, device_id);
CREATE INDEX devices_by_status ON devices (status, device_id);
CREATE INDEX devices_by_world_type ON devices (world_type, device_id);

-- One row per (capability, device): the capability filter and discovery read this index.
CREATE TABLE device_capabilities (
    capability TEXT NOT NULL,
    device_id  TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    PRIMARY KEY (capability, device_id)
) WITHOUT ROWID;
CREATE INDEX device_capabilities_by_device ON device_capabilities (device_id);

-- Every network a device belongs to, its primary network_id included.
CREATE TABLE network_members (
    network_id TEXT NOT NULL REFERENCES networks (network_id) ON DELETE CASCADE,
    device_id  TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    joined_at  REAL NOT NULL,
    PRIMARY KEY (network_id, device_id)
) WITHOUT ROWID;
CREATE INDEX network_members_by_device ON network_members (device_id, network_id);

CREATE TABLE connections (
    connection_id    TEXT PRIMARY KEY,
    source_device_id TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    target_device_id TEXT REFERENCES devices (device_id) ON DELETE CASCADE, -- NULL: to this node
    kind             TEXT NOT NULL DEFAULT 'link',                           -- link | session
    established_at   REAL NOT NULL,
    last_heartbeat   REAL NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    closed_at        REAL
) WITHOUT ROWID;
CREATE INDEX connections_by_source ON connections (source_device_id, connection_id);
CREATE INDEX connections_by_target ON connections (target_device_id, connection_id);
CREATE INDEX connections_by_status ON connections (status, connection_id);

CREATE TABLE api_tokens (
    token_id     TEXT PRIMARY KEY,                 -- public identifier, e.g. tok_3fa9...
    token_hash   BLOB NOT NULL UNIQUE,             -- SHA-256 of the secret token; the token itself is never stored
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'service', 'device', 'viewer')),
    device_id    TEXT,                             -- device tokens: the device they speak for
    networks     TEXT NOT NULL DEFAULT '[]',       -- JSON array: restricts the token to these networks
    created_at   REAL NOT NULL,
    expires_at   REAL,
    revoked_at   REAL,
    last_used_at REAL
) WITHOUT ROWID;

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    actor   TEXT NOT NULL,    -- token id, 'anonymous' or 'system'
    action  TEXT NOT NULL,    -- e.g. 'POST /api/v1/devices', 'auth.failure', 'token.create'
    target  TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,    -- 'ok', 'denied', 'error'
    status  INTEGER,
    client  TEXT NOT NULL DEFAULT '',
    detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_by_at ON audit_log (at);
