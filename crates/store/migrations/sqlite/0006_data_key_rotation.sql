
CREATE TABLE data_key_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    compartment TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    kek_version INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    created_at INTEGER NOT NULL
);
INSERT INTO data_key_new (id, compartment, wrapped, kek_version, state, created_at)
    SELECT id, compartment, wrapped, kek_version, state, created_at FROM data_key;
DELETE FROM sqlite_sequence WHERE name = 'data_key_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'data_key_new', seq FROM sqlite_sequence WHERE name = 'data_key';
DROP TABLE data_key;
ALTER TABLE data_key_new RENAME TO data_key;
CREATE UNIQUE INDEX data_key_live ON data_key (compartment) WHERE state <> 'retiring';
CREATE INDEX data_key_kek_version ON data_key (kek_version);
CREATE INDEX data_key_state ON data_key (state);
INSERT INTO meta (key, value) VALUES ('kek_wrap_floor', '1') ON CONFLICT (key) DO NOTHING;
