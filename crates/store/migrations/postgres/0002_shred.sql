
CREATE INDEX resource_version_dek ON resource_version (dek_id);
CREATE INDEX data_key_kek_version ON data_key (kek_version);
CREATE TABLE shred_approval (
    token_hash TEXT PRIMARY KEY,
    compartment TEXT NOT NULL,
    approver_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE
);
