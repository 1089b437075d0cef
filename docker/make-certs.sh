#!/bin/sh
# A throwaway CA and one server certificate per PostgreSQL host, for docker/compose.yml
# (the `certs` service runs it once into the `certs` volume). Every daemon checks its
# peers' certificates against ca.crt with sslmode=verify-full. In production use your own
# CA; this exists so that the example is never a plaintext one.
#   make-certs.sh DIR HOST...
set -eu
dir=$1; shift
mkdir -p "$dir"; cd "$dir"
if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=regionsync example CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
fi
for host in "$@"; do
  [ -f "$host.crt" ] && continue
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$host" -keyout "$host.key" \
    -out "$host.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\n' "$host" > "$host.ext"
  openssl x509 -req -in "$host.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$host.ext" -out "$host.crt" 2>/dev/null
  rm -f "$host.csr" "$host.ext"
  chmod 600 "$host.key"
  # the postgres image runs the server as uid 999; it must own its key
  chown "${CERT_OWNER:-999:999}" "$host.key" "$host.crt" 2>/dev/null || true
done
chmod 644 ca.crt
rm -f ca.key ca.srl   # nothing more is signed with it
