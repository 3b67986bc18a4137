
CREATE TABLE search_keys (
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    keys TEXT NOT NULL,
    PRIMARY KEY (rtype, id)
) WITHOUT ROWID;
INSERT INTO search_keys (rtype, id, keys)
    SELECT rtype, id, group_concat(param || ' ' || hex(token) || ' ' || ord, char(10))
    FROM search_index WHERE param <> '_id' GROUP BY rtype, id;
DROP INDEX search_index_resource;
DELETE FROM search_index
    WHERE rtype IN (SELECT DISTINCT rtype FROM resource_current) AND param = '_id';
