
CREATE TABLE search_index (
    rtype TEXT NOT NULL,
    param TEXT NOT NULL,
    token BLOB NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (rtype, param, token, id)
) WITHOUT ROWID;
CREATE INDEX search_index_resource ON search_index (rtype, id);
