
CREATE TABLE audit_event (
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time_us INTEGER NOT NULL,
    principal TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    body BLOB NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (node, seq)
);
CREATE INDEX audit_event_time ON audit_event (time_us);
CREATE INDEX audit_event_principal ON audit_event (principal, time_us);
CREATE TABLE audit_patient (
    patient TEXT NOT NULL,
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (patient, node, seq)
) WITHOUT ROWID;
CREATE TABLE audit_checkpoint (
    node TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    time_us INTEGER NOT NULL,
    prev_signature BLOB,
    signature BLOB NOT NULL,
    PRIMARY KEY (node, last_seq)
);
