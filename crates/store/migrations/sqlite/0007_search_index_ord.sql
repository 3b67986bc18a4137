
CREATE TABLE search_index_new (
    rtype TEXT NOT NULL,
    param TEXT NOT NULL,
    token BLOB NOT NULL,
    ord INTEGER NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (rtype, param, token, ord, id)
) WITHOUT ROWID;
INSERT INTO search_index_new (rtype, param, token, ord, id)
    SELECT rtype, param, token, 0, id FROM search_index;
DROP TABLE search_index;
ALTER TABLE search_index_new RENAME TO search_index;
CREATE INDEX search_index_resource ON search_index (rtype, id);
