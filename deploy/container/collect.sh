#!/bin/sh
# Stage 1 of the Dockerfile: gather under ROOT (with ROOT/usr/local/bin/carevault in place) the
# shared libraries the binary links, as ldd names them, the CA bundle for outgoing TLS (alert
# webhooks), and a passwd and group with the unprivileged user `carevault` (10001); and an empty
# data directory, mode 0700, at /data-dir.
set -eu
root=$1
bin=$root/usr/local/bin/carevault
if ldd "$bin" | grep -q 'not found'; then
  ldd "$bin" >&2
  echo "collect.sh: a library of the binary is missing from this stage's base" >&2
  exit 1
fi
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
if [ -e /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$root/etc/ssl/certs"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
fi
mkdir -p "$root/etc" "$root/tmp" "$root/var/lib" /data-dir
echo 'carevault:x:10001:10001:CareVault:/var/lib/carevault:/sbin/nologin' > "$root/etc/passwd"
echo 'carevault:x:10001:' > "$root/etc/group"
chmod 1777 "$root/tmp"
# The data directory, copied apart by the Dockerfile to give it to the service user.
chmod 700 /data-dir
