
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE resource_version (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated_us INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    dek_id INTEGER NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (rtype, id, version)
);
CREATE INDEX resource_version_type_seq ON resource_version (rtype, seq);
CREATE TABLE resource_current (
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (rtype, id)
) WITHOUT ROWID;
CREATE TABLE data_key (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    compartment TEXT NOT NULL UNIQUE,
    wrapped BLOB NOT NULL,
    kek_version INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    created_at INTEGER NOT NULL
);
CREATE TABLE principal (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    roles TEXT NOT NULL,
    organization TEXT,
    disabled INTEGER NOT NULL DEFAULT 0,
    locked INTEGER NOT NULL DEFAULT 0,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE credential (
    principal_id TEXT PRIMARY KEY REFERENCES principal (id),
    password_hash TEXT NOT NULL,
    totp_secret BLOB NOT NULL,
    totp_last_step INTEGER NOT NULL,
    recovery_codes TEXT NOT NULL
);
CREATE TABLE enrollment (
    token_hash TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL REFERENCES principal (id),
    expires_at INTEGER NOT NULL,
    pending_totp BLOB
);
CREATE INDEX enrollment_principal ON enrollment (principal_id);
CREATE TABLE session (
    token_hash TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL REFERENCES principal (id),
    created_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX session_principal ON session (principal_id);
