//! The gateway's signing key for upstream assertions: a PKCS#8 Ed25519 or P-256 key held as a
//! ring key pair (parsed once, not per signature), its public JWK and RFC 7638 thumbprint.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use sha2::{Digest, Sha256};
use std::fmt;

/// The JWS algorithms an assertion may be signed with (asymmetric only: the upstream must be
/// able to verify without being able to sign).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlg {
    EdDSA,
    ES256,
}

impl AssertionAlg {
    pub fn name(self) -> &'static str {
        match self {
            AssertionAlg::EdDSA => "EdDSA",
            AssertionAlg::ES256 => "ES256",
        }
    }
}

enum Pair {
    Ed(Ed25519KeyPair),
    // ECDSA signing draws a random nonce; SystemRandom is stateless and thread-safe.
    Es(EcdsaKeyPair, SystemRandom),
}

pub struct SigningKey {
    alg: AssertionAlg,
    pair: Pair,
    kid: String,
    /// The public JWK as the JWKS endpoint serves it (`kid`, `alg`, `use` included).
    jwk: serde_json::Value,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private half.
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// Parses a PEM `PRIVATE KEY` (PKCS#8) of the algorithm's curve.
    pub fn from_pem(alg: AssertionAlg, pem: &[u8]) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| {
            "not a PKCS#8 private key (\"-----BEGIN PRIVATE KEY-----\"); convert one with \
             `openssl pkcs8 -topk8 -nocrypt`"
                .to_string()
        })?;
        let der = der.secret_pkcs8_der();
        let (pair, public) = match alg {
            AssertionAlg::EdDSA => {
                // OpenSSL writes PKCS#8 v1 (no public key inside): ring's checked constructor
                // wants v2, so the public key is derived instead.
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| format!("not an Ed25519 private key (algorithm EdDSA): {e}"))?;
                let public = pair.public_key().as_ref().to_vec();
                (Pair::Ed(pair), public)
            }
            AssertionAlg::ES256 => {
                let rng = SystemRandom::new();
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|e| format!("not a P-256 private key (algorithm ES256): {e}"))?;
                let public = pair.public_key().as_ref().to_vec();
                (Pair::Es(pair, rng), public)
            }
        };
        let (kid, mut jwk) = public_jwk(alg, &public)?;
        jwk["kid"] = kid.clone().into();
        jwk["alg"] = alg.name().into();
        jwk["use"] = "sig".into();
        Ok(SigningKey {
            alg,
            pair,
            kid,
            jwk,
        })
    }

    pub fn alg(&self) -> AssertionAlg {
        self.alg
    }

    /// The RFC 7638 thumbprint of the public key, which is also the JOSE `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// The JWS signature over `signing_input` (`header.payload`), as JWS encodes it.
    pub fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, String> {
        match &self.pair {
            Pair::Ed(p) => Ok(p.sign(signing_input).as_ref().to_vec()),
            Pair::Es(p, rng) => p
                .sign(rng, signing_input)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".to_string()),
        }
    }
}

/// The public JWK's required members and its RFC 7638 thumbprint. The thumbprint input is
/// those members in lexicographic order without whitespace, which `json!` with these keys
/// does not promise, so it is written out.
fn public_jwk(alg: AssertionAlg, public: &[u8]) -> Result<(String, serde_json::Value), String> {
    let (canonical, jwk) = match alg {
        AssertionAlg::EdDSA => {
            let x = B64.encode(public);
            (
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
            )
        }
        AssertionAlg::ES256 => {
            // ring gives the uncompressed point: 0x04 || x || y, 32 bytes each.
            let point = public
                .strip_prefix(&[0x04])
                .filter(|p| p.len() == 64)
                .ok_or("unexpected P-256 public key encoding")?;
            let (x, y) = (B64.encode(&point[..32]), B64.encode(&point[32..]));
            (
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
            )
        }
    };
    Ok((B64.encode(Sha256::digest(canonical.as_bytes())), jwk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_thumbprint_matches_rfc_8037() {
        // RFC 8037 appendix A.2 / A.3.
        let x = B64
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .expect("test value");
        let (kid, jwk) = public_jwk(AssertionAlg::EdDSA, &x).expect("test value");
        assert_eq!(kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(jwk["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    }

    #[test]
    fn rfc_8037_private_key_gives_its_public_key() {
        // RFC 8037 A.1's private key as PKCS#8 (v1): the public key is derived from it.
        let d = B64
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .expect("test value");
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&d);
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let key = SigningKey::from_pem(AssertionAlg::EdDSA, pem.as_bytes()).expect("test value");
        assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(key.public_jwk()["alg"], "EdDSA");
        assert_eq!(key.public_jwk()["use"], "sig");
        assert!(!format!("{key:?}").contains("nWGx"));
    }

    #[test]
    fn a_key_of_the_other_curve_or_not_pkcs8_is_refused() {
        let ed = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../upstream-mock/keys/ed-1.key.pem"
        ))
        .expect("test value");
        let ec = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../upstream-mock/keys/ec-1.key.pem"
        ))
        .expect("test value");
        assert!(SigningKey::from_pem(AssertionAlg::EdDSA, &ed).is_ok());
        assert!(SigningKey::from_pem(AssertionAlg::ES256, &ec).is_ok());
        let e = SigningKey::from_pem(AssertionAlg::ES256, &ed).expect_err("refused");
        assert!(e.contains("P-256"), "{e}");
        let e = SigningKey::from_pem(AssertionAlg::EdDSA, &ec).expect_err("refused");
        assert!(e.contains("Ed25519"), "{e}");
        let e = SigningKey::from_pem(AssertionAlg::EdDSA, b"hello").expect_err("refused");
        assert!(e.contains("PKCS#8"), "{e}");
    }
}
