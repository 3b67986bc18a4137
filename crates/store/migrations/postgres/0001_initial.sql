
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE resource_version (
    seq BIGSERIAL PRIMARY KEY,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version BIGINT NOT NULL,
    last_updated_us BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    dek_id BIGINT NOT NULL,
    body BYTEA NOT NULL,
    UNIQUE (rtype, id, version)
);
CREATE INDEX resource_version_type_seq ON resource_version (rtype, seq);
CREATE TABLE resource_current (
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    PRIMARY KEY (rtype, id)
);
CREATE TABLE data_key (
    id BIGSERIAL PRIMARY KEY,
    compartment TEXT NOT NULL UNIQUE,
    wrapped BYTEA NOT NULL,
    kek_version BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    created_at BIGINT NOT NULL
);
CREATE TABLE principal (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    roles TEXT NOT NULL,
    organization TEXT,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    locked BOOLEAN NOT NULL DEFAULT FALSE,
    failed_logins BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE TABLE credential (
    principal_id TEXT PRIMARY KEY REFERENCES principal (id),
    password_hash TEXT NOT NULL,
    totp_secret BYTEA NOT NULL,
    totp_last_step BIGINT NOT NULL,
    recovery_codes TEXT NOT NULL
);
CREATE TABLE enrollment (
    token_hash TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL REFERENCES principal (id),
    expires_at BIGINT NOT NULL,
    pending_totp BYTEA
);
CREATE INDEX enrollment_principal ON enrollment (principal_id);
CREATE TABLE session (
    token_hash TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL REFERENCES principal (id),
    created_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX session_principal ON session (principal_id);
CREATE TABLE audit_head (
    node TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
CREATE TABLE audit_event (
    node TEXT NOT NULL,
    seq BIGINT NOT NULL,
    time_us BIGINT NOT NULL,
    principal TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    body BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (node, seq)
);
CREATE INDEX audit_event_time ON audit_event (time_us);
CREATE INDEX audit_event_principal ON audit_event (principal, time_us);
CREATE TABLE audit_patient (
    patient TEXT NOT NULL,
    node TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (patient, node, seq)
);
CREATE TABLE audit_checkpoint (
    node TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    head_hash BYTEA NOT NULL,
    time_us BIGINT NOT NULL,
    prev_signature BYTEA,
    signature BYTEA NOT NULL,
    PRIMARY KEY (node, last_seq),
    UNIQUE (node, first_seq)
);
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
    expires_at BIGINT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);
CREATE TABLE policy (
    name TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE policy_state (
    id INT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO policy_state (id, version) VALUES (1, 0);
CREATE TABLE policy_history (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    text TEXT,
    at BIGINT NOT NULL
);
CREATE TABLE break_glass (
    id BIGSERIAL PRIMARY KEY,
    principal_id TEXT NOT NULL REFERENCES principal (id),
    until BIGINT NOT NULL,
    patient TEXT,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX break_glass_principal ON break_glass (principal_id, until);
CREATE TABLE search_index (
    rtype TEXT NOT NULL,
    param TEXT NOT NULL,
    token BYTEA NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (rtype, param, token, id)
);
CREATE INDEX search_index_resource ON search_index (rtype, id);
