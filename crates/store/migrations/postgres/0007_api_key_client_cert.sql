-- An API key may be bound to a client certificate (the SHA-256 fingerprint of the certificate
-- the caller must present in the TLS handshake). NULL: not bound; existing keys stay unbound.
ALTER TABLE api_key ADD COLUMN client_cert_sha256 TEXT;
