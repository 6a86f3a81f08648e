-- 0005: the mesh's replicated registry. Every device and network has a versioned record here
-- (hybrid logical clock + node id, last-writer-wins; docs/mesh.md), deletions stay as tombstones
-- until collected. Triggers note every local registry change in mesh_dirty so the mesh can stamp
-- it with a version; while the mesh applies records from peers it holds a row in
-- mesh_apply_guard (inside its own transaction), which silences the triggers.

CREATE TABLE mesh_records (
    kind    TEXT NOT NULL CHECK (kind IN ('device', 'network')),
    id      TEXT NOT NULL,
    hlc     INTEGER NOT NULL,             -- hybrid logical clock: Unix ms << 16 | logical counter
    node    TEXT NOT NULL,                -- the node that made this version (the tie-break)
    owner   TEXT NOT NULL,                -- devices: the node they are attached to
    deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    body    TEXT NOT NULL DEFAULT '',     -- canonical JSON of the replicated fields ('' when deleted)
    applied INTEGER NOT NULL DEFAULT 1 CHECK (applied IN (0, 1)), -- 0: waits for a network to arrive
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX mesh_records_pending ON mesh_records (applied) WHERE applied = 0;

-- Local changes not yet stamped; gen counts changes so a stamp only clears what it saw.
CREATE TABLE mesh_dirty (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    gen  INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;

CREATE TABLE mesh_apply_guard (
    one INTEGER PRIMARY KEY
);

CREATE TRIGGER mesh_device_insert AFTER INSERT ON devices
WHEN NOT EXISTS (SELECT 1 FROM mesh_apply_guard)
BEGIN
    INSERT INTO mesh_dirty (kind, id, gen) VALUES ('device', NEW.device_id, 1)
    ON CONFLICT (kind, id) DO UPDATE SET gen = gen + 1;
END;

-- last_seen is local (heartbeats); updated_at moves with every other change.
CREATE TRIGGER mesh_device_update
AFTER UPDATE OF network_id, name, world_type, capabilities, hardware_spec, registered_at, status ON devices
WHEN NOT EXISTS (SELECT 1 FROM mesh_apply_guard)
BEGIN
    INSERT INTO mesh_dirty (kind, id, gen) VALUES ('device', NEW.device_id, 1)
    ON CONFLICT (kind, id) DO UPDATE SET gen = gen + 1;
END;

CREATE TRIGGER mesh_device_delete AFTER DELETE ON devices
WHEN NOT EXISTS (SELECT 1 FROM mesh_apply_guard)
BEGIN
    INSERT INTO mesh_dirty (kind, id, gen) VALUES ('device', OLD.device_id, 1)
    ON CONFLICT (kind, id) DO UPDATE SET gen = gen + 1;
END;

CREATE TRIGGER mesh_member_insert AFTER INSERT ON network_members
WHEN NOT EXISTS (SELECT 1 FROM mesh_apply_guard)
BEGIN
    INSERT INTO mesh_dirty (kind, id, gen) VALUES ('device', NEW.device_id, 1)
    ON CONFLICT (kind, id) DO UPDATE SET gen = gen + 1;
END;

CREATE TRIGGER mesh_member_delete AFTER DELETE ON network_members
WHEN NOT EXISTS (SELECT 1 FROM mesh_apply_guard)
BEGIN
    INSERT INTO mesh_dirty (kind, id, gen) VALUES ('device', OLD.device_id, 1)
    ON CONFLICT (kind, id) DO UPDATE SET gen = gen + 1;
END;

CREATE TRIGGER mesh_network_insert AFTER INSERT ON networks
WHEN NOT EXISTS (SELECT 1 FROM mesh_apply_guard)
BEGIN
    INSERT INTO mesh_dirty (kind, id, gen) VALUES ('network', NEW.network_id, 1)
    ON CONFLICT (kind, id) DO UPDATE SET gen = gen + 1;
END;

CREATE TRIGGER mesh_network_update AFTER UPDATE OF name, owner_device_id, created_at ON networks
WHEN NOT EXISTS (SELECT 1 FROM mesh_apply_guard)
BEGIN
    INSERT INTO mesh_dirty (kind, id, gen) VALUES ('network', NEW.network_id, 1)
    ON CONFLICT (kind, id) DO UPDATE SET gen = gen + 1;
END;

CREATE TRIGGER mesh_network_delete AFTER DELETE ON networks
WHEN NOT EXISTS (SELECT 1 FROM mesh_apply_guard)
BEGIN
    INSERT INTO mesh_dirty (kind, id, gen) VALUES ('network', OLD.network_id, 1)
    ON CONFLICT (kind, id) DO UPDATE SET gen = gen + 1;
END;

-- What existed before this migration is a local change the mesh has not stamped yet.
INSERT INTO mesh_dirty (kind, id, gen) SELECT 'network', network_id, 1 FROM networks;
INSERT INTO mesh_dirty (kind, id, gen) SELECT 'device', device_id, 1 FROM devices;
