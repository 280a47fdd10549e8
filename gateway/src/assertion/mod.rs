//! Identity the upstream can verify (`upstream_assertion`): a short-lived compact JWS the
//! gateway signs for each admitted identity, so an upstream that can be reached some other way
//! still refuses requests the gateway did not vouch for. Plain `X-Auth-Subject` headers are
//! only as safe as the network around the upstream.
//!
//! One assertion is reused for the same identity and upstream while more than half of its
//! lifetime is left, so the cost per request is a cache lookup, not a signature.

pub use crate::signing::{AssertionAlg, SigningKey};

use crate::auth::Principal;
use crate::config::model::AssertionSpec;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The JOSE `typ` of an assertion, so it cannot be mistaken for (or replayed as) an access
/// token by a verifier that checks types.
pub const TYP: &str = "authgate+jwt";

/// Signs (and reuses) assertions for one configuration version.
pub struct Signer {
    spec: Arc<AssertionSpec>,
    /// `base64url(JOSE header)`, the same for every assertion of this key.
    header_b64: String,
    issued: quick_cache::sync::Cache<u64, Arc<Issued>>,
    hasher: RandomState,
}

/// An assertion and what it was made for. The cache key is only a hash: a hit is used only
/// when every field matches, so a collision re-signs and never hands out another identity.
struct Issued {
    audience: usize,
    provider: Arc<str>,
    subject: String,
    scopes: crate::auth::Scopes,
    value: HeaderValue,
    reuse_until: SystemTime,
    /// Its `exp`: reused only for a token that may be used at least that long.
    exp: u64,
}

/// Which upstream an assertion is for: its index (for the reuse cache) and name (`aud`).
#[derive(Clone, Copy)]
pub struct Audience<'a> {
    pub index: usize,
    pub name: &'a str,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    scope: &'a str,
    provider: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
}

impl Signer {
    pub fn new(spec: Arc<AssertionSpec>, capacity: usize) -> Self {
        let header = serde_json::json!({
            "alg": spec.key.alg().name(),
            "typ": TYP,
            "kid": spec.key.kid(),
        });
        Signer {
            header_b64: B64.encode(header.to_string()),
            issued: quick_cache::sync::Cache::new(capacity.max(16)),
            hasher: RandomState::new(),
            spec,
        }
    }

    /// The request header the assertion travels in.
    pub fn header(&self) -> &HeaderName {
        &self.spec.header
    }

    /// The assertion for `principal` towards `audience` at `now`: a reused one while more than
    /// half of its lifetime is left, else a new signature.
    pub fn assertion(
        &self,
        principal: &Principal,
        audience: Audience<'_>,
        now: SystemTime,
    ) -> Result<HeaderValue, String> {
        let key = self.cache_key(principal, audience.index);
        if let Some(hit) = self.issued.get(&key) {
            let outlives = principal
                .valid_until
                .is_some_and(|v| unix_secs(v) < hit.exp);
            if now < hit.reuse_until
                && !outlives
                && hit.audience == audience.index
                && hit.subject == principal.subject
                && *hit.provider == *principal.provider
                && (Arc::ptr_eq(&hit.scopes, &principal.scopes) || hit.scopes == principal.scopes)
            {
                return Ok(hit.value.clone());
            }
        }
        let issued = self.sign(principal, audience, now)?;
        let value = issued.value.clone();
        self.issued.insert(key, Arc::new(issued));
        Ok(value)
    }

    fn cache_key(&self, p: &Principal, audience: usize) -> u64 {
        let mut h = self.hasher.build_hasher();
        audience.hash(&mut h);
        p.provider.hash(&mut h);
        p.subject.hash(&mut h);
        p.scopes.hash(&mut h);
        h.finish()
    }

    fn sign(
        &self,
        p: &Principal,
        audience: Audience<'_>,
        now: SystemTime,
    ) -> Result<Issued, String> {
        let iat = unix_secs(now);
        // Never longer than the token it stands for may be used: an assertion must not let
        // an upstream accept an identity the gateway would already refuse.
        let mut exp = iat + self.spec.ttl.as_secs();
        if let Some(until) = p.valid_until {
            exp = exp.min(unix_secs(until).max(iat + 1));
        }
        let jti = uuid::Uuid::new_v4().simple().to_string();
        let scope = p.scopes.join(" ");
        let claims = Claims {
            iss: &self.spec.issuer,
            aud: audience.name,
            sub: &p.subject,
            scope: &scope,
            provider: &p.provider,
            iat,
            exp,
            jti: &jti,
        };
        let payload = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
        let mut jws = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 96);
        jws.push_str(&self.header_b64);
        jws.push('.');
        B64.encode_string(&payload, &mut jws);
        let signature = self.spec.key.sign(jws.as_bytes())?;
        jws.push('.');
        B64.encode_string(&signature, &mut jws);
        let value = HeaderValue::from_str(&jws).map_err(|e| e.to_string())?;
        let lifetime = exp.saturating_sub(iat);
        Ok(Issued {
            audience: audience.index,
            provider: p.provider.clone(),
            subject: p.subject.clone(),
            scopes: p.scopes.clone(),
            value,
            reuse_until: UNIX_EPOCH + Duration::from_secs(iat) + Duration::from_secs(lifetime) / 2,
            exp,
        })
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The public keys `GET /.well-known/jwks.json` serves: the running key, and each earlier one
/// for one `ttl` after it stopped signing, so assertions already in flight still verify.
#[derive(Default)]
pub struct PublishedKeys {
    inner: Mutex<Published>,
}

#[derive(Default)]
struct Published {
    current: Option<PublicKey>,
    retired: Vec<(PublicKey, Instant)>,
}

#[derive(Clone)]
struct PublicKey {
    kid: String,
    jwk: serde_json::Value,
    ttl: Duration,
}

impl PublishedKeys {
    /// Records the key of a newly installed configuration version (none: assertions off).
    pub fn commit(&self, spec: Option<&AssertionSpec>, now: Instant) {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let new = spec.map(|s| PublicKey {
            kid: s.key.kid().to_string(),
            jwk: s.key.public_jwk().clone(),
            ttl: s.ttl,
        });
        if p.current.as_ref().map(|k| &k.kid) == new.as_ref().map(|k| &k.kid) {
            // Same key; a new ttl applies to what it signs from now on.
            p.current = new;
            return;
        }
        if let Some(old) = p.current.take() {
            let until = now + old.ttl;
            p.retired.push((old, until));
        }
        if let Some(k) = &new {
            // A key that comes back is current again, not also retired.
            p.retired.retain(|(r, _)| r.kid != k.kid);
        }
        p.current = new;
        p.retired.retain(|(_, until)| *until > now);
    }

    /// The JWK Set document, or `None` when there is no key to publish.
    pub fn document(&self, now: Instant) -> Option<Vec<u8>> {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        p.retired.retain(|(_, until)| *until > now);
        let keys: Vec<&serde_json::Value> = p
            .current
            .iter()
            .chain(p.retired.iter().map(|(k, _)| k))
            .map(|k| &k.jwk)
            .collect();
        if keys.is_empty() {
            return None;
        }
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

    fn key(name: &str, alg: AssertionAlg) -> Arc<SigningKey> {
        let pem = std::fs::read(format!(
            "{}/../upstream-mock/keys/{name}.key.pem",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("test value");
        Arc::new(SigningKey::from_pem(alg, &pem).expect("test value"))
    }

    fn spec(key: Arc<SigningKey>, ttl: Duration) -> Arc<AssertionSpec> {
        Arc::new(AssertionSpec {
            header: HeaderName::from_static("x-auth-assertion"),
            key,
            issuer: "https://authgate.test".into(),
            ttl,
        })
    }

    const LMS: Audience<'static> = Audience {
        index: 0,
        name: "lms",
    };

    /// Verified by jsonwebtoken (another implementation than the signer's) with the key as
    /// the JWKS endpoint publishes it.
    fn verify(signer: &Signer, value: &HeaderValue) -> serde_json::Value {
        let token = value.to_str().expect("test value");
        let header = decode_header(token).expect("test value");
        assert_eq!(header.typ.as_deref(), Some(TYP));
        assert_eq!(header.kid.as_deref(), Some(signer.spec.key.kid()));
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(signer.spec.key.public_jwk().clone()).expect("test value");
        let alg = match signer.spec.key.alg() {
            AssertionAlg::EdDSA => Algorithm::EdDSA,
            AssertionAlg::ES256 => Algorithm::ES256,
        };
        let mut v = Validation::new(alg);
        v.set_audience(&["lms"]);
        v.set_issuer(&["https://authgate.test"]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        decode::<serde_json::Value>(token, &DecodingKey::from_jwk(&jwk).expect("test value"), &v)
            .expect("test value")
            .claims
    }

    #[test]
    fn both_algorithms_sign_what_a_verifier_accepts() {
        for (name, alg) in [("ed-1", AssertionAlg::EdDSA), ("ec-1", AssertionAlg::ES256)] {
            let signer = Signer::new(spec(key(name, alg), Duration::from_secs(60)), 100);
            let p = Principal::for_tests("42", &["read", "write"]);
            let v = signer
                .assertion(&p, LMS, SystemTime::now())
                .expect("test value");
            let claims = verify(&signer, &v);
            assert_eq!(claims["sub"], "42");
            assert_eq!(claims["scope"], "read write");
            assert_eq!(claims["provider"], "p");
            assert_eq!(claims["aud"], "lms");
            assert_eq!(
                claims["exp"].as_u64().expect("test value")
                    - claims["iat"].as_u64().expect("test value"),
                60
            );
            assert_eq!(claims["jti"].as_str().expect("test value").len(), 32);
        }
    }

    #[test]
    fn reused_per_identity_while_more_than_half_its_life_is_left() {
        let signer = Signer::new(
            spec(key("ed-1", AssertionAlg::EdDSA), Duration::from_secs(60)),
            100,
        );
        let t0 = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let alice = Principal::for_tests("alice", &["read"]);
        let bob = Principal::for_tests("bob", &["read"]);
        let a1 = signer.assertion(&alice, LMS, t0).expect("test value");
        assert_eq!(
            signer
                .assertion(&alice, LMS, t0 + Duration::from_secs(29))
                .expect("test value"),
            a1
        );
        assert_ne!(signer.assertion(&bob, LMS, t0).expect("test value"), a1);
        let other = Audience {
            index: 1,
            name: "billing",
        };
        assert_ne!(signer.assertion(&alice, other, t0).expect("test value"), a1);
        let more = Principal::for_tests("alice", &["read", "admin"]);
        assert_ne!(signer.assertion(&more, LMS, t0).expect("test value"), a1);
        // Half-way through, a new one.
        assert_ne!(
            signer
                .assertion(&alice, LMS, t0 + Duration::from_secs(30))
                .expect("test value"),
            a1
        );
    }

    #[test]
    fn never_outlives_the_token_it_stands_for() {
        let signer = Signer::new(
            spec(key("ec-1", AssertionAlg::ES256), Duration::from_secs(300)),
            100,
        );
        let now = SystemTime::now();
        let mut p = Principal::for_tests("42", &[]);
        p.valid_until = Some(now + Duration::from_secs(20));
        let claims = verify(
            &signer,
            &signer.assertion(&p, LMS, now).expect("test value"),
        );
        assert_eq!(
            claims["exp"].as_u64().expect("test value"),
            unix_secs(now) + 20
        );
        assert_eq!(claims["scope"], "");
        // The same identity with a token that ends sooner is not handed the longer assertion.
        let long = Principal::for_tests("7", &[]);
        let first = signer.assertion(&long, LMS, now).expect("test value");
        let mut short = long.clone();
        short.valid_until = Some(now + Duration::from_secs(10));
        let second = signer.assertion(&short, LMS, now).expect("test value");
        assert_ne!(first, second);
        let claims = verify(&signer, &second);
        assert_eq!(
            claims["exp"].as_u64().expect("test value"),
            unix_secs(now) + 10
        );
    }

    #[test]
    fn published_keys_keep_the_previous_key_for_one_ttl() {
        let keys = PublishedKeys::default();
        let t0 = Instant::now();
        assert!(keys.document(t0).is_none());
        let ed = spec(key("ed-1", AssertionAlg::EdDSA), Duration::from_secs(60));
        let ec = spec(key("ec-1", AssertionAlg::ES256), Duration::from_secs(30));
        keys.commit(Some(&ed), t0);
        let kids = |now| -> Vec<String> {
            let doc: serde_json::Value =
                serde_json::from_slice(&keys.document(now).unwrap_or_default()).unwrap_or_default();
            doc["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| k["kid"].as_str().expect("test value").to_string())
                .collect()
        };
        assert_eq!(kids(t0), [ed.key.kid()]);
        // The same key again changes nothing.
        keys.commit(Some(&ed), t0);
        assert_eq!(kids(t0), [ed.key.kid()]);
        keys.commit(Some(&ec), t0 + Duration::from_secs(1));
        assert_eq!(
            kids(t0 + Duration::from_secs(2)),
            [ec.key.kid(), ed.key.kid()]
        );
        assert_eq!(kids(t0 + Duration::from_secs(62)), [ec.key.kid()]);
        // Assertions turned off: the last key stays published for its ttl.
        keys.commit(None, t0 + Duration::from_secs(100));
        assert_eq!(kids(t0 + Duration::from_secs(101)), [ec.key.kid()]);
        assert!(keys.document(t0 + Duration::from_secs(131)).is_none());
    }
}
