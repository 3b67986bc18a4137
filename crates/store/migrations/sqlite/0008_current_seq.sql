
ALTER TABLE resource_current ADD COLUMN seq INTEGER;
UPDATE resource_current SET seq = (
    SELECT v.seq FROM resource_version v
    WHERE v.rtype = resource_current.rtype AND v.id = resource_current.id
      AND v.version = resource_current.version
);
