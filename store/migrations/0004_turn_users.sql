-- 0004: TURN long-term credential users kept in the store (besides those in the config file).
-- Only the derived keys are stored (RFC 8489 §18.5: MD5 and SHA-256 of user:realm:password),
-- never the password; USERHASH (RFC 8489 §14.4) is indexed for anonymous lookups.

CREATE TABLE turn_users (
    username   TEXT NOT NULL,
    realm      TEXT NOT NULL,
    md5_key    BLOB NOT NULL,
    sha256_key BLOB NOT NULL,
    userhash   BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (username, realm)
) WITHOUT ROWID;
CREATE UNIQUE INDEX turn_users_by_userhash ON turn_users (userhash, realm);
