#!/usr/bin/env bash
# Regenerates the TEST-ONLY signing keys of upstream-mock and their public JWKs.
#
# Only the openssl CLI and coreutils are needed, so the mock binary itself never
# does RSA/EC math beyond what jsonwebtoken (ring) already does for signing.
# Running this invalidates every token minted with the old keys; commit the
# result together with any test that pins a key.
set -euo pipefail
cd "$(dirname "$0")"

b64url() { basenc --base64url -w0 | tr -d '='; }
# Hex string (any case, optional colons/whitespace) on stdin -> base64url.
hex_b64url() { tr -d ': \n' | xxd -r -p | b64url; }

# The public key's raw bytes: the tail of the SubjectPublicKeyInfo DER.
spki_tail() { openssl pkey -pubin -in "$1" -outform DER | tail -c "$2"; }

gen_rsa() {
  local kid=$1
  openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$kid.key.pem"
  openssl pkey -in "$kid.key.pem" -pubout -out "$kid.pub.pem"
  local n e
  n=$(openssl rsa -pubin -in "$kid.pub.pem" -noout -modulus | sed 's/^Modulus=//' | hex_b64url)
  # e is 65537 for every key openssl generates by default.
  e=AQAB
  printf '{"kty":"RSA","use":"sig","alg":"RS256","kid":"%s","n":"%s","e":"%s"}\n' "$kid" "$n" "$e" >"$kid.jwk.json"
}

gen_ec() {
  local kid=$1 curve=$2 crv=$3 alg=$4 coord=$5
  openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:"$curve" -pkeyopt ec_param_enc:named_curve -out "$kid.key.pem"
  openssl pkey -in "$kid.key.pem" -pubout -out "$kid.pub.pem"
  # Uncompressed point 0x04 || X || Y at the end of the SPKI.
  local point x y
  point=$(spki_tail "$kid.pub.pem" $((2 * coord)) | xxd -p -c 1000)
  x=$(printf '%s' "${point:0:$((2 * coord))}" | hex_b64url)
  y=$(printf '%s' "${point:$((2 * coord))}" | hex_b64url)
  printf '{"kty":"EC","use":"sig","alg":"%s","kid":"%s","crv":"%s","x":"%s","y":"%s"}\n' "$alg" "$kid" "$crv" "$x" "$y" >"$kid.jwk.json"
}

gen_ed() {
  local kid=$1
  openssl genpkey -quiet -algorithm ED25519 -out "$kid.key.pem"
  openssl pkey -in "$kid.key.pem" -pubout -out "$kid.pub.pem"
  local x
  x=$(spki_tail "$kid.pub.pem" 32 | b64url)
  printf '{"kty":"OKP","use":"sig","alg":"EdDSA","kid":"%s","crv":"Ed25519","x":"%s"}\n' "$kid" "$x" >"$kid.jwk.json"
}

gen_rsa rsa-1
gen_rsa rsa-2
gen_ec ec-1 P-256 P-256 ES256 32
gen_ec ec384-1 P-384 P-384 ES384 48
gen_ed ed-1
# Test keys are meant to be read by anyone running the test suite.
chmod 644 ./*.pem ./*.jwk.json
echo "keys regenerated in $(pwd)"
