//! JWT verification for one `type: jwt` provider.
//!
//! Order matters for what the client is told: the signature is checked first, so a forged
//! token is always `invalid_token`; only a token whose signature and other claims are good is
//! called expired.

use super::jwks::{JwksStore, Lookup};
use super::keys::VerifyKey;
use super::{Denial, Principal, Reason};
use crate::config::compile::KeyFamily;
use crate::config::model::{ClaimPath, ClaimRule, JwtSpec};
use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Longest token looked at; anything longer is refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest `kid` looked up: key ids are short names or thumbprints, and each unknown one is
/// remembered for a while.
pub const MAX_KID_LEN: usize = 256;

const MAX_NUMERIC_DATE: f64 = super::MAX_TIME_SECS as f64;

/// The JOSE header fields the gateway decides on, read before jsonwebtoken sees the token
/// (its `Header` has no `crit`, and would accept any `typ`).
#[derive(Deserialize)]
struct JoseHeader {
    alg: Algorithm,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    /// Present at all, whatever its value: extensions the gateway does not understand
    /// (RFC 7515 4.1.11), and an empty list is itself invalid.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

impl JoseHeader {
    fn of(token: &str) -> Option<JoseHeader> {
        let segment = token.split('.').next()?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// Why a provider did not accept a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtFailure {
    /// This provider has no key that could have signed it (another provider may).
    NotMine(Denial, &'static str),
    /// A key of ours checked it and it is not acceptable.
    Invalid(Denial, Reason),
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
    required_claims: Vec<ClaimRule>,
    typ: Option<String>,
    /// Claims copied into the principal for route rules.
    keep: Arc<[ClaimPath]>,
    /// `dpop` is on: `cnf` is read, and one that is not a key binding refuses the token.
    binds: bool,
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
            required_claims: spec.required_claims.clone(),
            typ: spec.typ.clone(),
            keep: Arc::from([]),
            binds: spec.dpop.mode != crate::config::model::DpopMode::Off,
        })
    }

    /// Keeps these claims with each principal (see `auth::keep_claims`).
    pub fn keeping(mut self, keep: Arc<[ClaimPath]>) -> Self {
        self.keep = keep;
        self
    }

    pub fn jwks(&self) -> Option<&Arc<JwksStore>> {
        self.jwks.as_ref()
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, JwtFailure> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtFailure::Invalid(
                Denial::Malformed,
                "token too large".into(),
            ));
        }
        let header = JoseHeader::of(token).ok_or(JwtFailure::Invalid(
            Denial::Malformed,
            "malformed token".into(),
        ))?;
        if header.crit {
            return Err(JwtFailure::Invalid(
                Denial::Malformed,
                "the token has critical header extensions (crit), which are not supported".into(),
            ));
        }
        if header.kid.as_ref().is_some_and(|k| k.len() > MAX_KID_LEN) {
            return Err(JwtFailure::Invalid(
                Denial::Malformed,
                "the kid header is too long".into(),
            ));
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtFailure::NotMine(
                Denial::AlgNotAllowed,
                "algorithm not allowed",
            ));
        }
        let family = KeyFamily::of(header.alg);
        let kid = header.kid.as_deref();

        let mut tried_any = false;
        let mut last = JwtFailure::NotMine(Denial::UnknownKid, "unknown key");
        for key in self
            .static_keys
            .iter()
            .filter(|k| k.accepts(family, header.alg, kid))
        {
            tried_any = true;
            match self.check_with(token, key, &header) {
                Ok(p) => return Ok(p),
                Err(JwtFailure::NotMine(d, r)) => last = JwtFailure::NotMine(d, r),
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
                match self.check_with(token, key, &header) {
                    Ok(p) => return Ok(p),
                    Err(JwtFailure::NotMine(d, r)) => last = JwtFailure::NotMine(d, r),
                    Err(definite) => return Err(definite),
                }
            }
        }
        Err(last)
    }

    /// Verifies signature then claims with one key. Only a token whose signature verified is
    /// judged on its claims, so another provider's token is never refused here for them.
    fn check_with(
        &self,
        token: &str,
        key: &VerifyKey,
        header: &JoseHeader,
    ) -> Result<Principal, JwtFailure> {
        use jsonwebtoken::errors::ErrorKind;
        let mut v = Validation::new(header.alg);
        // Time claims are checked below: jsonwebtoken skips an `nbf` it cannot parse, and
        // "expired" must only ever be said of an otherwise valid token.
        v.validate_exp = false;
        v.validate_nbf = false;
        let mut required = Vec::new();
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
        let invalid = |d: Denial, r: &'static str| JwtFailure::Invalid(d, r.into());
        let data = match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v) {
            Ok(d) => d,
            Err(e) => {
                return Err(match e.kind() {
                    ErrorKind::InvalidSignature => {
                        JwtFailure::NotMine(Denial::BadSignature, "bad signature")
                    }
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
                        JwtFailure::NotMine(Denial::AlgNotAllowed, "key does not fit")
                    }
                    ErrorKind::InvalidIssuer => invalid(Denial::WrongIssuer, "wrong issuer"),
                    ErrorKind::InvalidAudience => invalid(Denial::WrongAudience, "wrong audience"),
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => {
                        invalid(Denial::WrongIssuer, "wrong issuer")
                    }
                    ErrorKind::MissingRequiredClaim(_) => {
                        invalid(Denial::WrongAudience, "wrong audience")
                    }
                    _ => invalid(Denial::Malformed, "malformed token"),
                })
            }
        };
        let claims = data.claims;
        let exp =
            numeric_date(&claims, "exp")?.ok_or(invalid(Denial::Malformed, "token has no exp"))?;
        let nbf = numeric_date(&claims, "nbf")?;
        let iat = numeric_date(&claims, "iat")?;
        let now = SystemTime::now();
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        // In range by numeric_date, and leeway is at most a day: no overflow.
        if nbf.is_some_and(|n| at(n) > now + self.leeway) {
            return Err(invalid(Denial::NotYetValid, "token not valid yet (nbf)"));
        }
        if iat.is_some_and(|i| at(i) > now + self.leeway) {
            // A token from the future, as PyJWT (and so simplejwt) refuses it.
            return Err(invalid(Denial::NotYetValid, "token not valid yet (iat)"));
        }
        if let Some(want) = &self.typ {
            let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
            let typ = typ
                .as_deref()
                .map(|t| t.strip_prefix("application/").unwrap_or(t));
            if typ != Some(want.as_str()) {
                return Err(JwtFailure::Invalid(
                    Denial::TypMismatch,
                    format!("the typ header is not {want}").into(),
                ));
            }
        }
        for rule in &self.required_claims {
            let ok = claims
                .get(&rule.claim)
                .is_some_and(|v| rule.allowed.iter().any(|a| claim_equals(v, a)));
            if !ok {
                return Err(JwtFailure::Invalid(
                    Denial::ClaimMismatch,
                    format!("the {} claim is missing or not accepted", rule.claim).into(),
                ));
            }
        }
        let expires_at = at(exp);
        if now > expires_at + self.leeway {
            return Err(JwtFailure::Expired(expires_at));
        }
        let subject = match claims.get(&self.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => return Err(invalid(Denial::Malformed, "token has no subject")),
        };
        if !subject.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            // It is forwarded in a header; refuse what a header cannot carry safely.
            return Err(invalid(Denial::Malformed, "subject is not printable ASCII"));
        }
        let jkt = match self.binds {
            true => super::dpop::confirmation(claims.get("cnf"))
                .map_err(|r| JwtFailure::Invalid(Denial::DpopInvalid, r.into()))?,
            false => None,
        };
        let scopes = super::scope_set(scopes_of(claims.get(&self.scopes_claim)));
        Ok(Principal {
            subject,
            scopes,
            provider: self.name.clone(),
            expires_at: Some(expires_at),
            valid_until: Some(expires_at + self.leeway),
            credential_id: None,
            jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            issued_at: iat.map(at),
            claims: super::keep_claims(&self.keep, &claims),
            jkt,
        })
    }
}

/// A NumericDate claim (RFC 7519 2): a JSON number from 1970 to the year 9999, fractions
/// allowed; anything else present under that name is refused, never ignored.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, JwtFailure> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    match v.as_f64() {
        Some(f) if f.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(&f) => Ok(Some(f as u64)),
        _ => Err(JwtFailure::Invalid(
            Denial::Malformed,
            match name {
                "exp" => "the exp claim is not a valid time",
                "nbf" => "the nbf claim is not a valid time",
                _ => "the iat claim is not a valid time",
            }
            .into(),
        )),
    }
}

/// Claim equality for `required_claims`: numbers by value (`1` equals `1.0`), the rest exactly.
pub(crate) fn claim_equals(v: &Value, want: &Value) -> bool {
    match (v, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => v == want,
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
/// A JWT's payload, read without verifying anything: only for choosing where to send it
/// (`iss`) or how long to keep a revocation, never for a decision.
pub fn unverified_payload<T: serde::de::DeserializeOwned>(token: &str) -> Option<T> {
    if !is_jwt_shaped(token) {
        return None;
    }
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1)?)
        .ok()?;
    serde_json::from_slice(&payload).ok()
}

/// The `iss` a JWT says it has (unverified; see [`unverified_payload`]).
pub fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    unverified_payload::<Iss>(token)?.iss
}

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
            discovery: false,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(5),
            issuer: Some("https://issuer".into()),
            audience: vec!["api".into()],
            leeway: Duration::from_secs(30),
            subject_claim: "user_id".into(),
            scopes_claim: "scope".into(),
            required_claims: Vec::new(),
            typ: None,
            ca: None,
            dpop: Default::default(),
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
        verify_raw(&spec(b"k1"), &token(b"k1", claims))
    }

    fn verify_raw(spec: &JwtSpec, token: &str) -> Result<Principal, JwtFailure> {
        let v = JwtVerifier::new("p", spec, None).expect("verifier");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(v.verify(token))
    }

    /// A token with the header and payload given as JSON, signed with HS256 over exactly
    /// those bytes (jsonwebtoken's encoder cannot write `crit` or odd claim types).
    fn hand_made(secret: &[u8], header: &str, payload: &str) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        // jsonwebtoken's own signer (base64url already), so no HMAC is written here.
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .expect("sign");
        format!("{input}.{sig}")
    }

    fn with(f: impl FnOnce(&mut JwtSpec)) -> JwtSpec {
        let mut s = spec(b"k1");
        f(&mut s);
        s
    }

    #[test]
    fn required_claims_name_the_claim() {
        let s = with(|s| {
            s.required_claims = vec![ClaimRule {
                claim: "token_type".into(),
                allowed: vec![json!("access")],
            }]
        });
        let ok = token(b"k1", good(json!({"token_type": "access"})));
        assert!(verify_raw(&s, &ok).is_ok());
        for bad in [
            json!({"token_type": "refresh"}),
            json!({"token_type": "sliding"}),
            json!({}),
        ] {
            assert_eq!(
                verify_raw(&s, &token(b"k1", good(bad.clone()))),
                Err(JwtFailure::Invalid(
                    Denial::ClaimMismatch,
                    "the token_type claim is missing or not accepted".into()
                )),
                "{bad}"
            );
        }
        // A list of allowed values, and numbers compared by value.
        let s = with(|s| {
            s.required_claims = vec![ClaimRule {
                claim: "ver".into(),
                allowed: vec![json!(2), json!("two")],
            }]
        });
        assert!(verify_raw(&s, &token(b"k1", good(json!({"ver": 2.0})))).is_ok());
        assert!(verify_raw(&s, &token(b"k1", good(json!({"ver": "two"})))).is_ok());
        assert!(verify_raw(&s, &token(b"k1", good(json!({"ver": 3})))).is_err());
        assert!(verify_raw(&s, &token(b"k1", good(json!({"ver": [2]})))).is_err());
    }

    #[test]
    fn an_expired_token_of_the_wrong_type_is_invalid_not_expired() {
        let s = with(|s| {
            s.required_claims = vec![ClaimRule {
                claim: "token_type".into(),
                allowed: vec![json!("access")],
            }]
        });
        let t = token(
            b"k1",
            good(json!({"token_type": "refresh", "exp": now() - 3600})),
        );
        assert!(matches!(verify_raw(&s, &t), Err(JwtFailure::Invalid(..))));
    }

    #[test]
    fn typ_is_pinned_case_insensitively() {
        let s = with(|s| s.typ = Some("at+jwt".into()));
        let claims = r#"{"user_id":1,"exp":9999999999,"iss":"https://issuer","aud":"api"}"#;
        for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
            let t = hand_made(
                b"k1",
                &format!(r#"{{"alg":"HS256","typ":"{typ}"}}"#),
                claims,
            );
            assert!(verify_raw(&s, &t).is_ok(), "{typ}");
        }
        for header in [r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"alg":"HS256"}"#] {
            let t = hand_made(b"k1", header, claims);
            assert_eq!(
                verify_raw(&s, &t),
                Err(JwtFailure::Invalid(
                    Denial::TypMismatch,
                    "the typ header is not at+jwt".into()
                )),
                "{header}"
            );
        }
    }

    #[test]
    fn crit_and_long_kids_are_refused() {
        let s = spec(b"k1");
        let claims = r#"{"user_id":1,"exp":9999999999,"iss":"https://issuer","aud":"api"}"#;
        for header in [
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"alg":"HS256","crit":null}"#,
        ] {
            let t = hand_made(b"k1", header, claims);
            assert!(
                matches!(verify_raw(&s, &t), Err(JwtFailure::Invalid(Denial::Malformed, r)) if r.contains("crit")),
                "{header}"
            );
        }
        let long = "k".repeat(MAX_KID_LEN + 1);
        let t = hand_made(
            b"k1",
            &format!(r#"{{"alg":"HS256","kid":"{long}"}}"#),
            claims,
        );
        assert_eq!(
            verify_raw(&s, &t),
            Err(JwtFailure::Invalid(
                Denial::Malformed,
                "the kid header is too long".into()
            ))
        );
        let ok = hand_made(b"k1", r#"{"alg":"HS256","kid":"short"}"#, claims);
        assert!(verify_raw(&s, &ok).is_ok());
    }

    #[test]
    fn time_claims_must_be_numbers_in_range() {
        let s = spec(b"k1");
        let base = r#""user_id":1,"iss":"https://issuer","aud":"api""#;
        let t =
            |claims: &str| hand_made(b"k1", r#"{"alg":"HS256"}"#, &format!("{{{base},{claims}}}"));
        let invalid = |r: &str| Err(JwtFailure::Invalid(Denial::Malformed, r.to_string().into()));
        // A string nbf is refused, not skipped (jsonwebtoken alone would ignore it).
        assert_eq!(
            verify_raw(&s, &t(r#""exp":9999999999,"nbf":"4102444800""#)),
            invalid("the nbf claim is not a valid time")
        );
        assert_eq!(
            verify_raw(&s, &t(r#""exp":"9999999999""#)),
            invalid("the exp claim is not a valid time")
        );
        assert_eq!(
            verify_raw(&s, &t(r#""exp":9999999999,"iat":true"#)),
            invalid("the iat claim is not a valid time")
        );
        // Absurd values are refused, never a panic.
        for claims in [
            r#""exp":1e300"#,
            r#""exp":18446744073709551615"#,
            r#""exp":253402300800"#,
            r#""exp":-1"#,
            r#""exp":9999999999,"iat":1e19"#,
            r#""exp":9999999999,"nbf":-5"#,
        ] {
            assert!(
                matches!(verify_raw(&s, &t(claims)), Err(JwtFailure::Invalid(Denial::Malformed, r)) if r.contains("not a valid time")),
                "{claims}"
            );
        }
        // The year 9999 itself is fine, and so are fractional times.
        assert!(verify_raw(&s, &t(r#""exp":253402300799"#)).is_ok());
        assert!(verify_raw(&s, &t(r#""exp":9999999999.5,"iat":1700000000.25"#)).is_ok());
        // A token issued in the future is not valid yet.
        let future = now() + 3600;
        assert_eq!(
            verify_raw(&s, &t(&format!(r#""exp":9999999999,"iat":{future}"#))),
            Err(JwtFailure::Invalid(
                Denial::NotYetValid,
                "token not valid yet (iat)".into()
            ))
        );
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
            Err(JwtFailure::Invalid(
                Denial::WrongIssuer,
                "wrong issuer".into()
            ))
        );
        assert_eq!(
            verify(good(json!({"aud": "other"}))),
            Err(JwtFailure::Invalid(
                Denial::WrongAudience,
                "wrong audience".into()
            ))
        );
        assert_eq!(
            verify(good(json!({"nbf": t + 120}))),
            Err(JwtFailure::Invalid(
                Denial::NotYetValid,
                "token not valid yet (nbf)".into()
            ))
        );
        assert!(
            verify(good(json!({"nbf": t + 10}))).is_ok(),
            "nbf within leeway"
        );
        let mut no_exp = good(json!({}));
        no_exp.as_object_mut().expect("obj").remove("exp");
        assert_eq!(
            verify(no_exp),
            Err(JwtFailure::Invalid(
                Denial::Malformed,
                "token has no exp".into()
            ))
        );
        let mut no_iss = good(json!({}));
        no_iss.as_object_mut().expect("obj").remove("iss");
        assert_eq!(
            verify(no_iss),
            Err(JwtFailure::Invalid(
                Denial::WrongIssuer,
                "wrong issuer".into()
            ))
        );
        let mut no_sub = good(json!({}));
        no_sub.as_object_mut().expect("obj").remove("user_id");
        assert_eq!(
            verify(no_sub),
            Err(JwtFailure::Invalid(
                Denial::Malformed,
                "token has no subject".into()
            ))
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
            Err(JwtFailure::NotMine(Denial::BadSignature, "bad signature"))
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
