#!/bin/sh
# Make the secret files deploy/compose/compose.yaml mounts, under deploy/compose/secrets/ (as
# root: each file is chowned to the container user that reads it, mode 0600). Existing files
# are kept, so running it again changes nothing.
#
#   db-password      PostgreSQL password of the role `carevault`, for CareVault
#   db-password-postgres   the same, for PostgreSQL (each reads a copy owned by its own user)
#   kek-passphrase   seals CareVault's KEK files: keep a copy offline
#   db-ca.pem        a CA for PostgreSQL's certificate (CareVault checks the server against it)
#   db-cert.pem, db-key.pem   PostgreSQL's certificate (for the host name `postgres`) and key
set -eu
dir=$(cd "$(dirname "$0")" && pwd)/secrets
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"
umask 077
[ -e db-password ] || openssl rand -base64 32 | tr -d '\n' > db-password
[ -e db-password-postgres ] || cp db-password db-password-postgres
[ -e kek-passphrase ] || openssl rand -base64 32 > kek-passphrase
if [ ! -e db-key.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 397 \
    -subj '/CN=CareVault compose database CA' -keyout ca-key.pem -out db-ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=postgres' \
    -keyout db-key.pem -out db.csr 2>/dev/null
  printf 'subjectAltName=DNS:postgres\n' > db.ext
  openssl x509 -req -in db.csr -CA db-ca.pem -CAkey ca-key.pem -CAcreateserial -days 397 \
    -extfile db.ext -out db-cert.pem 2>/dev/null
  rm -f db.csr db.ext db-ca.srl ca-key.pem
fi
# CareVault runs as 10001 and refuses secret files others can read; PostgreSQL (the official
# image) runs as 999 and refuses a key others can read.
chown 10001:10001 db-password kek-passphrase db-ca.pem
chown 999:999 db-password-postgres db-cert.pem db-key.pem
chmod 600 db-password db-password-postgres kek-passphrase db-key.pem
chmod 644 db-ca.pem db-cert.pem
ls -l "$dir"
