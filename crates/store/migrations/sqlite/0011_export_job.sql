-- Bulk export jobs ($export): the server's record of each job (request, progress, output
-- files) as JSON, found by id and by the principal who started it.
CREATE TABLE export_job (
    id TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    body TEXT NOT NULL
);
