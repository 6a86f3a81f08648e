-- 0003: the relay's offline queue (DURABLE messages waiting for their receiver's DELIVERED) and
-- the persisted multicast group memberships (so durable multicast reaches offline members).

CREATE TABLE relay_queue (
    -- Delivery order. AUTOINCREMENT: a seq is never reused after a delete, so a session's queue
    -- cursor ("highest seq pushed") can never skip a later row that got an old number.
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE, -- the receiver
    source      BLOB NOT NULL,    -- 16-byte id of the sending device (the frame's source)
    message_id  INTEGER NOT NULL, -- the frame's u64 message id, stored as two's complement i64
    enqueued_at REAL NOT NULL,
    expires_at  REAL NOT NULL,
    frame       BLOB NOT NULL     -- the whole frame as received: header and payload
);
-- One row per (receiver, sender, message id): a sender's retry is not stored twice, and
-- DELIVERED finds its row with one lookup.
CREATE UNIQUE INDEX relay_queue_by_message ON relay_queue (device_id, source, message_id);
CREATE INDEX relay_queue_by_device ON relay_queue (device_id, seq);
CREATE INDEX relay_queue_by_expiry ON relay_queue (expires_at);

-- Per-receiver totals, updated in the same transaction as every insert and delete, so the limit
-- check of an insert is one primary-key read instead of a COUNT(*).
CREATE TABLE relay_queue_depth (
    device_id TEXT PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
    messages  INTEGER NOT NULL CHECK (messages >= 0),
    bytes     INTEGER NOT NULL CHECK (bytes >= 0)
) WITHOUT ROWID;

-- Multicast groups: group_id = SHA-256("asgard/group\0" || network id || name)[:16] (protocol §2.4).
CREATE TABLE relay_groups (
    group_id   BLOB NOT NULL,
    device_id  TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    network_id TEXT NOT NULL REFERENCES networks (network_id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    joined_at  REAL NOT NULL,
    PRIMARY KEY (group_id, device_id)
) WITHOUT ROWID;
CREATE INDEX relay_groups_by_device ON relay_groups (device_id);
