
CREATE TABLE compartment_org (
    compartment TEXT PRIMARY KEY,
    organization TEXT
);
CREATE TABLE api_key (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    owner_id TEXT REFERENCES principal (id),
    scopes TEXT NOT NULL,
    allowed_cidrs TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE policy (
    name TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE policy_history (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    text TEXT,
    at INTEGER NOT NULL
);
CREATE TABLE break_glass (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    principal_id TEXT NOT NULL REFERENCES principal (id),
    until INTEGER NOT NULL,
    patient TEXT,
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX break_glass_principal ON break_glass (principal_id, until);
