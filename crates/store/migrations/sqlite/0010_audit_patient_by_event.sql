
CREATE TABLE audit_patient_new (
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    patient TEXT NOT NULL,
    PRIMARY KEY (node, seq, patient)
) WITHOUT ROWID;
INSERT INTO audit_patient_new (node, seq, patient)
    SELECT node, seq, patient FROM audit_patient ORDER BY node, seq, patient;
DROP TABLE audit_patient;
ALTER TABLE audit_patient_new RENAME TO audit_patient;
