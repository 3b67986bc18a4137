
DROP INDEX data_key_live;
CREATE UNIQUE INDEX data_key_live ON data_key (md5(compartment)) WHERE state <> 'retiring';
