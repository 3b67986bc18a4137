
ALTER TABLE audit_patient DROP CONSTRAINT audit_patient_pkey;
ALTER TABLE audit_patient ADD PRIMARY KEY (node, seq, patient);
