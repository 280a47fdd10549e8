//! DPoP (RFC 9449) as the LMS's token endpoint and a client see it: the token endpoint binds
//! an access token to the key of the proof sent with the login (section 5, `cnf.jkt`), and
//! `upstream-mock dpop-proof` makes the proofs a client sends with each request.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use jsonwebtoken::{jwk::Jwk, Algorithm, DecodingKey, Header, Validation};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::keys::KeyPair;

/// The RFC 7638 thumbprint of a public JWK (its required members, in lexicographic order).
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    let canonical = match s("kty")? {
        "EC" => json!({"crv": s("crv")?, "kty": "EC", "x": s("x")?, "y": s("y")?}),
        "OKP" => json!({"crv": s("crv")?, "kty": "OKP", "x": s("x")?}),
        "RSA" => json!({"e": s("e")?, "kty": "RSA", "n": s("n")?}),
        _ => return None,
    };
    // serde_json writes object members sorted (no preserve_order feature) and without spaces.
    Some(B64.encode(Sha256::digest(canonical.to_string().as_bytes())))
}

/// The `jkt` a login's proof binds the token to: the proof must be a `dpop+jwt` for `POST`,
/// signed by the public key in its header.
pub fn bound_key(proof: &str) -> Result<String, String> {
    let header = jsonwebtoken::decode_header(proof).map_err(|e| format!("proof header: {e}"))?;
    if !header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err("the proof's typ is not dpop+jwt".into());
    }
    let jwk = header.jwk.ok_or("the proof has no jwk")?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("proof jwk: {e}"))?;
    let mut v = Validation::new(header.alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(proof, &key, &v)
        .map_err(|e| format!("proof signature: {e}"))?
        .claims;
    if claims.get("htm").and_then(Value::as_str) != Some("POST") {
        return Err("the proof is not for POST".into());
    }
    let public = serde_json::to_value(&jwk).map_err(|e| e.to_string())?;
    thumbprint(&public).ok_or_else(|| "the proof's jwk has no thumbprint".into())
}

/// What a proof is for.
pub struct ProofFor<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// The access token it accompanies (`ath`), if any.
    pub token: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub iat: u64,
}

/// A proof signed by `key` with `alg`, its public JWK in the header.
pub fn proof(key: &KeyPair, alg: Algorithm, what: &ProofFor<'_>) -> Result<String, String> {
    let mut public = key.jwk.clone();
    if let Some(o) = public.as_object_mut() {
        // The header carries the key, not the mock's bookkeeping.
        o.remove("kid");
        o.remove("alg");
        o.remove("use");
    }
    let jwk: Jwk = serde_json::from_value(public).map_err(|e| format!("jwk: {e}"))?;
    let mut header = Header::new(alg);
    header.typ = Some("dpop+jwt".into());
    header.jwk = Some(jwk);
    let mut claims = json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "htm": what.method,
        "htu": what.url,
        "iat": what.iat,
    });
    if let Some(t) = what.token {
        claims["ath"] = json!(B64.encode(Sha256::digest(t.as_bytes())));
    }
    if let Some(n) = what.nonce {
        claims["nonce"] = json!(n);
    }
    key.sign_header(&header, &claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySet;

    #[test]
    fn rfc_7638_example_thumbprint() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn a_login_proof_binds_to_its_key() {
        let keys = KeySet::load(None).expect("keys");
        for (kid, alg) in [("ec-1", Algorithm::ES256), ("ed-1", Algorithm::EdDSA)] {
            let key = keys.get(kid).expect("key");
            let what = ProofFor {
                method: "POST",
                url: "http://gw/api/token/",
                token: None,
                nonce: None,
                iat: 1_800_000_000,
            };
            let p = proof(key, alg, &what).expect("proof");
            assert_eq!(bound_key(&p), Ok(thumbprint(&key.jwk).expect("jkt")));
            let get = proof(
                key,
                alg,
                &ProofFor {
                    method: "GET",
                    ..what
                },
            )
            .expect("proof");
            assert!(bound_key(&get).is_err(), "a GET proof binds nothing");
        }
        assert!(bound_key("not.a.proof").is_err());
    }
}
