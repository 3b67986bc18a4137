
ALTER TABLE data_key DROP CONSTRAINT IF EXISTS data_key_compartment_key;
CREATE UNIQUE INDEX data_key_live ON data_key (compartment) WHERE state <> 'retiring';
CREATE INDEX data_key_state ON data_key (state);
INSERT INTO meta (key, value) VALUES ('kek_wrap_floor', '1') ON CONFLICT (key) DO NOTHING;
