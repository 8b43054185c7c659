# shellcheck shell=bash
# A test certificate authority for the local services, made with the machine's `openssl`
# (Debian's openssl package) into $KGATE_STATE_DIR/tls/. Sourced by scripts/services; any
# service that needs TLS (Kafka's secure listeners today) calls tls_ensure and uses the files:
#
#   ca.pem, ca.key                  the test CA (10 years)
#   server.pem, server.key          a server certificate signed by it, SAN DNS:localhost and
#                                   IP:127.0.0.1, serverAuth (825 days)
#   client.pem, client.key          a client certificate (CN=kgate, clientAuth) for mutual TLS
#   server-keystore.pem             server.key + server.pem in one file (a PEM keystore, as Java
#   client-keystore.pem             servers and clients read it: ssl.keystore.type=PEM)
#
# Keys are unencrypted PKCS#8. tls_ensure is idempotent: it keeps what is valid and makes again
# only what is missing, expiring within 30 days, or not signed by the CA in the folder (a new CA
# remakes every certificate). Test material only: never use it outside this machine.

TLS_DIR="${KGATE_STATE_DIR}/tls"
TLS_CA_DAYS=3650
TLS_LEAF_DAYS=825
# Made again when it expires within this many seconds (30 days).
TLS_RENEW_BEFORE=2592000

# tls_valid CERT: the certificate exists, parses and does not expire within TLS_RENEW_BEFORE.
tls_valid() {
  [[ -s "$1" ]] && openssl x509 -noout -checkend "$TLS_RENEW_BEFORE" -in "$1" >/dev/null 2>&1
}

# tls_pair_ok NAME: NAME.pem and NAME.key exist, the certificate is valid, signed by ca.pem,
# and the key is the certificate's.
tls_pair_ok() {
  local cert="${TLS_DIR}/${1}.pem" key="${TLS_DIR}/${1}.key"
  [[ -s "$key" && -s "${TLS_DIR}/${1}-keystore.pem" ]] || return 1
  tls_valid "$cert" || return 1
  openssl verify -CAfile "${TLS_DIR}/ca.pem" "$cert" >/dev/null 2>&1 || return 1
  tls_key_matches "$cert" "$key"
}

# tls_key_matches CERT KEY: KEY is the private key of CERT.
tls_key_matches() {
  local a b
  a="$(openssl x509 -noout -pubkey -in "$1" 2>/dev/null)" || return 1
  b="$(openssl pkey -pubout -in "$2" 2>/dev/null)" || return 1
  [[ -n "$a" && "$a" == "$b" ]]
}

# The openssl config the certificates are made with (no dependency on the system's openssl.cnf).
tls_openssl_cnf() {
  cat <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = kgate
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
}

# tls_make_leaf NAME CN EXTENSIONS CNF: NAME.key and NAME.pem signed by the CA, and
# NAME-keystore.pem (key + certificate).
tls_make_leaf() {
  local name="$1" cn="$2" ext="$3" cnf="$4" d="$TLS_DIR"
  if ! openssl req -new -config "$cnf" -newkey rsa:2048 -nodes -subj "/CN=${cn}" \
    -keyout "${d}/${name}.key.tmp" -out "${d}/${name}.csr.tmp" 2>>"${d}/openssl.log"; then
    die "tls: openssl could not make ${name}.key (log: ${d}/openssl.log)"
  fi
  if ! openssl x509 -req -in "${d}/${name}.csr.tmp" -CA "${d}/ca.pem" -CAkey "${d}/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$TLS_LEAF_DAYS" -sha256 \
    -extfile "$cnf" -extensions "$ext" -out "${d}/${name}.pem.tmp" 2>>"${d}/openssl.log"; then
    die "tls: openssl could not sign ${name}.pem (log: ${d}/openssl.log)"
  fi
  chmod 600 "${d}/${name}.key.tmp"
  cat "${d}/${name}.key.tmp" "${d}/${name}.pem.tmp" >"${d}/${name}-keystore.pem.tmp"
  chmod 600 "${d}/${name}-keystore.pem.tmp"
  mv "${d}/${name}.key.tmp" "${d}/${name}.key"
  mv "${d}/${name}.pem.tmp" "${d}/${name}.pem"
  mv "${d}/${name}-keystore.pem.tmp" "${d}/${name}-keystore.pem"
  rm -f "${d}/${name}.csr.tmp"
}

tls_ensure_locked() {
  command -v openssl >/dev/null 2>&1 ||
    die "openssl not found on PATH; it makes the local services' test CA (Debian: apt-get install openssl)"
  local d="$TLS_DIR" cnf made=()
  mkdir -p "$d"
  chmod 700 "$d"
  : >"${d}/openssl.log"
  cnf="${d}/openssl.cnf"
  tls_openssl_cnf >"$cnf"
  if ! tls_valid "${d}/ca.pem" || ! tls_key_matches "${d}/ca.pem" "${d}/ca.key"; then
    openssl req -x509 -config "$cnf" -extensions ca_ext -newkey rsa:2048 -nodes -sha256 \
      -days "$TLS_CA_DAYS" -subj "/CN=kgate local test CA" \
      -keyout "${d}/ca.key.tmp" -out "${d}/ca.pem.tmp" 2>>"${d}/openssl.log" ||
      die "tls: openssl could not make the test CA (log: ${d}/openssl.log)"
    chmod 600 "${d}/ca.key.tmp"
    mv "${d}/ca.key.tmp" "${d}/ca.key"
    mv "${d}/ca.pem.tmp" "${d}/ca.pem"
    made+=(ca.pem)
  fi
  if ! tls_pair_ok server; then
    tls_make_leaf server localhost server_ext "$cnf"
    made+=(server.pem)
  fi
  if ! tls_pair_ok client; then
    tls_make_leaf client kgate client_ext "$cnf"
    made+=(client.pem)
  fi
  if ((${#made[@]} > 0)); then
    log "tls: made ${made[*]} in $(rel "$d") (the local services' test CA)"
  fi
}

# tls_ensure: the test CA and its certificates exist and are valid (made once; see above).
tls_ensure() { with_lock "${TLS_DIR}.lock" tls_ensure_locked; }

# tls_fingerprint FILE: the SHA-256 fingerprint of a certificate (empty if unreadable).
tls_fingerprint() {
  openssl x509 -noout -fingerprint -sha256 -in "$1" 2>/dev/null | sed 's/.*=//'
}
