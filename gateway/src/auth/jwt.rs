//! JWT verification for one `type: jwt` provider.
//!
//! Order matters for what the client is told: the signature is checked first, so a forged
//! token is always `invalid_token`; only a token whose signature and other claims are good is
//! called expired.

use super::jwks::{JwksStore, Lookup};
use super::keys::VerifyKey;
use super::Principal;
use crate::config::compile::KeyFamily;
use crate::config::model::JwtSpec;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Longest token looked at; anything longer is refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a provider did not accept a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtFailure {
    /// This provider has no key that could have signed it (another provider may).
    NotMine(&'static str),
    /// A key of ours checked it and it is not acceptable.
    Invalid(&'static str),
    Expired(SystemTime),
    /// Keys could not be had because the JWKS endpoint is down and none were ever loaded.
    Unavailable,
}

pub struct JwtVerifier {
    pub name: Arc<str>,
    algorithms: Vec<Algorithm>,
    static_keys: Vec<VerifyKey>,
    jwks: Option<Arc<JwksStore>>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: Duration,
    subject_claim: String,
    scopes_claim: String,
}

impl JwtVerifier {
    pub fn new(name: &str, spec: &JwtSpec, jwks: Option<Arc<JwksStore>>) -> Result<Self, String> {
        let mut static_keys = Vec::with_capacity(spec.keys.len());
        for (i, k) in spec.keys.iter().enumerate() {
            static_keys.push(
                VerifyKey::from_static(k)
                    .map_err(|e| format!("auth.providers.{name}.keys[{i}]: {e}"))?,
            );
        }
        Ok(JwtVerifier {
            name: name.into(),
            algorithms: spec.algorithms.clone(),
            static_keys,
            jwks,
            issuer: spec.issuer.clone(),
            audience: spec.audience.clone(),
            leeway: spec.leeway,
            subject_claim: spec.subject_claim.clone(),
            scopes_claim: spec.scopes_claim.clone(),
        })
    }

    pub fn jwks(&self) -> Option<&Arc<JwksStore>> {
        self.jwks.as_ref()
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, JwtFailure> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtFailure::Invalid("token too large"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| JwtFailure::Invalid("malformed token"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtFailure::NotMine("algorithm not allowed"));
        }
        let family = KeyFamily::of(header.alg);
        let kid = header.kid.as_deref();

        let mut tried_any = false;
        let mut last = JwtFailure::NotMine("unknown key");
        for key in self
            .static_keys
            .iter()
            .filter(|k| k.accepts(family, header.alg, kid))
        {
            tried_any = true;
            match self.check_with(token, key, header.alg) {
                Ok(p) => return Ok(p),
                Err(JwtFailure::NotMine(r)) => last = JwtFailure::NotMine(r),
                Err(definite) => return Err(definite),
            }
        }
        if let Some(store) = &self.jwks {
            let set = match store.lookup(kid, family).await {
                Lookup::Found(set) => Some(set),
                Lookup::Unknown => None,
                Lookup::NotLoaded if !tried_any => return Err(JwtFailure::Unavailable),
                Lookup::NotLoaded => None,
            };
            let keys = set.as_ref().map_or(&[][..], |s| s.keys.as_slice());
            for key in keys.iter().filter(|k| k.accepts(family, header.alg, kid)) {
                match self.check_with(token, key, header.alg) {
                    Ok(p) => return Ok(p),
                    Err(JwtFailure::NotMine(r)) => last = JwtFailure::NotMine(r),
                    Err(definite) => return Err(definite),
                }
            }
        }
        Err(last)
    }

    /// Verifies signature then claims with one key.
    fn check_with(
        &self,
        token: &str,
        key: &VerifyKey,
        alg: Algorithm,
    ) -> Result<Principal, JwtFailure> {
        use jsonwebtoken::errors::ErrorKind;
        let mut v = Validation::new(alg);
        // `exp` is checked below, after everything else, so "expired" is only ever said of an
        // otherwise valid token; jsonwebtoken still insists that it is present.
        v.validate_exp = false;
        v.validate_nbf = true;
        v.leeway = self.leeway.as_secs();
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let data = match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v) {
            Ok(d) => d,
            Err(e) => {
                return Err(match e.kind() {
                    ErrorKind::InvalidSignature => JwtFailure::NotMine("bad signature"),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
                        JwtFailure::NotMine("key does not fit")
                    }
                    ErrorKind::ImmatureSignature => {
                        JwtFailure::Invalid("token not valid yet (nbf)")
                    }
                    ErrorKind::InvalidIssuer => JwtFailure::Invalid("wrong issuer"),
                    ErrorKind::InvalidAudience => JwtFailure::Invalid("wrong audience"),
                    ErrorKind::MissingRequiredClaim(c) if c == "exp" => {
                        JwtFailure::Invalid("token has no exp")
                    }
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => {
                        JwtFailure::Invalid("wrong issuer")
                    }
                    ErrorKind::MissingRequiredClaim(_) => JwtFailure::Invalid("wrong audience"),
                    _ => JwtFailure::Invalid("malformed token"),
                })
            }
        };
        let claims = data.claims;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(JwtFailure::Invalid("token has no exp"))?;
        let expires_at = SystemTime::UNIX_EPOCH + Duration::from_secs(exp);
        if SystemTime::now() > expires_at + self.leeway {
            return Err(JwtFailure::Expired(expires_at));
        }
        let subject = match claims.get(&self.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => return Err(JwtFailure::Invalid("token has no subject")),
        };
        if !subject.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            // It is forwarded in a header; refuse what a header cannot carry safely.
            return Err(JwtFailure::Invalid("subject is not printable ASCII"));
        }
        let scopes = super::scope_set(scopes_of(claims.get(&self.scopes_claim)));
        Ok(Principal {
            subject,
            scopes,
            provider: self.name.clone(),
            expires_at: Some(expires_at),
            valid_until: Some(expires_at + self.leeway),
            credential_id: None,
            jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            issued_at: claims
                .get("iat")
                .and_then(Value::as_u64)
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        })
    }
}

/// A scope claim as a space-separated string or an array of strings.
fn scopes_of(v: Option<&Value>) -> Vec<String> {
    let valid = |s: &str| s.bytes().all(|b| (0x21..0x7f).contains(&b));
    match v {
        Some(Value::String(s)) => s
            .split_whitespace()
            .filter(|s| valid(s))
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty() && valid(s))
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Three base64url segments: the shape that goes to JWT providers. One pass over the bytes
/// with a table lookup each, since every bearer token goes through it.
pub fn is_jwt_shaped(token: &str) -> bool {
    const BASE64URL: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
            b += 1;
        }
        t
    };
    let mut dots = 0;
    // At the start, and right after a dot, a segment is still empty.
    let mut segment_empty = true;
    for &b in token.as_bytes() {
        if b == b'.' {
            if segment_empty || dots == 2 {
                return false;
            }
            dots += 1;
            segment_empty = true;
        } else if BASE64URL[b as usize] {
            segment_empty = false;
        } else {
            return false;
        }
    }
    dots == 2 && !segment_empty
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{KeyMaterial, Secret, StaticKey};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn spec(secret: &[u8]) -> JwtSpec {
        JwtSpec {
            algorithms: vec![Algorithm::HS256],
            keys: vec![StaticKey {
                kid: None,
                material: KeyMaterial::Hmac(Secret::new(secret.to_vec())),
            }],
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            issuer: Some("https://issuer".into()),
            audience: vec!["api".into()],
            leeway: Duration::from_secs(30),
            subject_claim: "user_id".into(),
            scopes_claim: "scope".into(),
        }
    }

    fn token(secret: &[u8], claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("encode")
    }

    fn good(extra: Value) -> Value {
        let mut c = json!({"user_id": 42, "exp": now() + 600, "iss": "https://issuer", "aud": "api", "scope": "read write"});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn verify(claims: Value) -> Result<Principal, JwtFailure> {
        let v = JwtVerifier::new("p", &spec(b"k1"), None).expect("verifier");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(v.verify(&token(b"k1", claims)))
    }

    #[test]
    fn valid_token_gives_a_principal() {
        let p = verify(good(json!({}))).expect("valid");
        assert_eq!(p.subject, "42");
        assert_eq!(
            p.scopes.to_vec(),
            vec!["read".to_string(), "write".to_string()]
        );
        assert_eq!(&*p.provider, "p");
        let p = verify(good(json!({"scope": ["a", "b"], "user_id": "u-1"}))).expect("valid");
        assert_eq!(p.scopes.to_vec(), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(p.subject, "u-1");
    }

    #[test]
    fn claims_are_enforced() {
        let t = now();
        assert_eq!(
            verify(good(json!({"iss": "https://evil"}))),
            Err(JwtFailure::Invalid("wrong issuer"))
        );
        assert_eq!(
            verify(good(json!({"aud": "other"}))),
            Err(JwtFailure::Invalid("wrong audience"))
        );
        assert_eq!(
            verify(good(json!({"nbf": t + 120}))),
            Err(JwtFailure::Invalid("token not valid yet (nbf)"))
        );
        assert!(
            verify(good(json!({"nbf": t + 10}))).is_ok(),
            "nbf within leeway"
        );
        let mut no_exp = good(json!({}));
        no_exp.as_object_mut().expect("obj").remove("exp");
        assert_eq!(verify(no_exp), Err(JwtFailure::Invalid("token has no exp")));
        let mut no_iss = good(json!({}));
        no_iss.as_object_mut().expect("obj").remove("iss");
        assert_eq!(verify(no_iss), Err(JwtFailure::Invalid("wrong issuer")));
        let mut no_sub = good(json!({}));
        no_sub.as_object_mut().expect("obj").remove("user_id");
        assert_eq!(
            verify(no_sub),
            Err(JwtFailure::Invalid("token has no subject"))
        );
    }

    #[test]
    fn expiry_respects_leeway() {
        let t = now();
        assert!(
            verify(good(json!({"exp": t - 25}))).is_ok(),
            "inside 30 s leeway"
        );
        match verify(good(json!({"exp": t - 40}))) {
            Err(JwtFailure::Expired(at)) => {
                assert_eq!(at, SystemTime::UNIX_EPOCH + Duration::from_secs(t - 40));
            }
            other => panic!("expected expired, got {other:?}"),
        }
    }

    #[test]
    fn forged_tokens_are_never_called_expired() {
        let v = JwtVerifier::new("p", &spec(b"k1"), None).expect("verifier");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let forged = token(b"not-the-key", good(json!({"exp": now() - 3600})));
        assert_eq!(
            rt.block_on(v.verify(&forged)),
            Err(JwtFailure::NotMine("bad signature"))
        );
    }

    #[test]
    fn shapes() {
        assert!(is_jwt_shaped("a.b.c"));
        assert!(is_jwt_shaped("eyJ-_.x1.y2"));
        assert!(!is_jwt_shaped("a.b"));
        assert!(!is_jwt_shaped("a.b.c.d"));
        assert!(!is_jwt_shaped("a..c"));
        assert!(!is_jwt_shaped("a.b.c="));
        assert!(!is_jwt_shaped("0123456789abcdef"));
        for bad in [
            "",
            ".",
            "..",
            ".b.c",
            "a.b.",
            "a.b.c.",
            "a b.c.d",
            "a.b.c\u{e9}",
            "a.+.c",
        ] {
            assert!(!is_jwt_shaped(bad), "{bad:?}");
        }
    }
}
