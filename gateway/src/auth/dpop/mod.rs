//! DPoP proofs (RFC 9449): the checks of section 4.3 on one proof, apart from the request
//! plumbing. A proof is a JWT signed by the client's own key, whose public half it carries in
//! its header; a token bound to that key (`cnf.jkt`) is useless without it.
//!
//! The proof checks are here; [`replay`] remembers each proof's `jti` and [`nonce`] makes and
//! checks server nonces. `auth` decides when a proof is needed (`dpop: off|optional|required`).

pub mod nonce;
pub mod replay;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The request header that carries the proof.
pub const HEADER: http::HeaderName = http::HeaderName::from_static("dpop");

/// Far above a real proof (an EC key and a few claims are under 1 KiB); a huge `jwk` is
/// refused before anything parses it.
pub const MAX_PROOF_LEN: usize = 4096;
const MAX_JTI_LEN: usize = 256;

/// JWK members that only a private key has (RFC 7517/7518): a proof carries the public key.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// What the request says, for the proof to be checked against.
pub struct Expected<'a> {
    /// The request method (`htm`).
    pub method: &'a str,
    /// The request URI without query and fragment, normalised ([`normalize_htu`]).
    pub htu: &'a str,
    /// The access token presented with the proof (`ath`), if any.
    pub access_token: Option<&'a str>,
    pub now: SystemTime,
    /// How far `iat` may be from `now`, either way.
    pub window: Duration,
    /// The asymmetric algorithms accepted (`dpop_algorithms`).
    pub algorithms: &'a [Algorithm],
}

/// A proof that passed: the key's RFC 7638 thumbprint (to compare with `cnf.jkt`) and the
/// `jti` (for the replay set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub jkt: String,
    pub jti: String,
    pub iat: u64,
    /// The server nonce it carries (RFC 9449 8), if any.
    pub nonce: Option<String>,
}

/// Why a proof was refused (the 401's `error_description`; reason `dpop_invalid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    Malformed,
    Type,
    AlgorithmNotAllowed,
    Key,
    Signature,
    Method,
    Uri,
    Time,
    TokenHash,
}

impl ProofError {
    pub fn description(self) -> &'static str {
        match self {
            ProofError::Malformed => "the DPoP proof is malformed",
            ProofError::Type => "the DPoP proof's typ is not dpop+jwt",
            ProofError::AlgorithmNotAllowed => "the DPoP proof's algorithm is not allowed",
            ProofError::Key => "the DPoP proof's jwk is not a public key of its algorithm",
            ProofError::Signature => "the DPoP proof's signature is not valid",
            ProofError::Method => "the DPoP proof is for another method",
            ProofError::Uri => "the DPoP proof is for another URI",
            ProofError::Time => "the DPoP proof is too old or from the future",
            ProofError::TokenHash => "the DPoP proof is for another access token",
        }
    }
}

#[derive(Deserialize)]
struct RawHeader {
    typ: Option<String>,
    alg: Option<String>,
    jwk: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
    htm: String,
    htu: String,
    iat: serde_json::Number,
    #[serde(default)]
    ath: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// Checks one proof against the request (RFC 9449 4.3, steps 1-11 except replay and nonce).
pub fn verify_proof(proof: &str, want: &Expected<'_>) -> Result<Proof, ProofError> {
    use ProofError::*;
    if proof.len() > MAX_PROOF_LEN || proof.split('.').count() != 3 {
        return Err(Malformed);
    }
    let header_b64 = proof.split('.').next().ok_or(Malformed)?;
    let raw: RawHeader = B64
        .decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Malformed)?;
    if !raw
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(Type);
    }
    let alg: Algorithm = raw
        .alg
        .as_deref()
        .and_then(|a| a.parse().ok())
        .ok_or(AlgorithmNotAllowed)?;
    let symmetric = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    if symmetric || !want.algorithms.contains(&alg) {
        return Err(AlgorithmNotAllowed);
    }
    let jwk_members = raw.jwk.ok_or(Key)?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk_members.contains_key(*m)) {
        return Err(Key);
    }
    let jwk: Jwk =
        serde_json::from_value(serde_json::Value::Object(jwk_members)).map_err(|_| Key)?;
    if !key_fits(&jwk, alg) {
        return Err(Key);
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| Key)?;
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.set_required_spec_claims::<&str>(&[]);
    let claims = jsonwebtoken::decode::<Claims>(proof, &key, &v)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => Signature,
            _ => Malformed,
        })?
        .claims;
    // It becomes part of a Redis key: visible ASCII only, and short.
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_LEN || !printable(&claims.jti) {
        return Err(Malformed);
    }
    if claims.htm != want.method {
        return Err(Method);
    }
    if normalize_htu(&claims.htu).as_deref() != Some(want.htu) {
        return Err(Uri);
    }
    let iat = claims
        .iat
        .as_f64()
        .filter(|t| t.is_finite() && (0.0..=super::MAX_TIME_SECS as f64).contains(t))
        .ok_or(Time)? as u64;
    let now = want
        .now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if iat.abs_diff(now) > want.window.as_secs() {
        return Err(Time);
    }
    if let Some(token) = want.access_token {
        let ath = B64.encode(Sha256::digest(token.as_bytes()));
        if claims.ath.as_deref() != Some(ath.as_str()) {
            return Err(TokenHash);
        }
    }
    Ok(Proof {
        jkt: thumbprint(&jwk).ok_or(Key)?,
        jti: claims.jti,
        iat,
        nonce: claims.nonce,
    })
}

/// A token's `cnf` (RFC 7800, RFC 9449 6): `None` when it has none, the `jkt` when it is a DPoP
/// key binding, `Err` for any other confirmation (an mTLS-bound token cannot be checked here,
/// so it is refused rather than taken as a bearer token).
pub fn confirmation(
    cnf: Option<&serde_json::Value>,
) -> Result<Option<std::sync::Arc<str>>, &'static str> {
    let Some(cnf) = cnf else {
        return Ok(None);
    };
    match cnf.get("jkt") {
        Some(serde_json::Value::String(j))
            if (1..=128).contains(&j.len()) && j.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(j.as_str().into()))
        }
        _ => Err("the token's cnf is not a DPoP key binding"),
    }
}

/// The request a proof must be for: `htm` and the parts of `htu`.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a str,
    /// `http` or `https` as the client used it (a trusted proxy's `X-Forwarded-Proto`).
    pub scheme: &'a str,
    pub host: Option<&'a str>,
    /// The path as sent.
    pub path: &'a [u8],
}

impl Target<'_> {
    /// The normalised `htu` this request answers to; `None` without a usable host or path.
    pub fn htu(&self) -> Option<String> {
        let path = std::str::from_utf8(self.path).ok()?;
        let host = self.host.filter(|h| !h.is_empty())?;
        normalize_htu(&format!("{}://{host}{path}", self.scheme))
    }
}

/// Whether the key type fits the algorithm (an RSA key for ES256 is refused, not tried).
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    use jsonwebtoken::jwk::{EllipticCurve, OctetKeyPairType};
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        (AlgorithmParameters::OctetKeyPair(k), Algorithm::EdDSA) => {
            k.key_type == OctetKeyPairType::OctetKeyPair && k.curve == EllipticCurve::Ed25519
        }
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        _ => false,
    }
}

/// The RFC 7638 thumbprint of a public JWK: SHA-256 of its required members in lexicographic
/// order, base64url.
pub fn thumbprint(jwk: &Jwk) -> Option<String> {
    use jsonwebtoken::jwk::EllipticCurve;
    let curve = |c: &EllipticCurve| match c {
        EllipticCurve::P256 => Some("P-256"),
        EllipticCurve::P384 => Some("P-384"),
        EllipticCurve::P521 => Some("P-521"),
        EllipticCurve::Ed25519 => Some("Ed25519"),
    };
    let canonical = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            curve(&ec.curve)?,
            ec.x,
            ec.y
        ),
        AlgorithmParameters::OctetKeyPair(k) => format!(
            r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
            curve(&k.curve)?,
            k.x
        ),
        AlgorithmParameters::RSA(r) => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, r.e, r.n),
        AlgorithmParameters::OctetKey(_) => return None,
    };
    Some(B64.encode(Sha256::digest(canonical.as_bytes())))
}

/// `htu` as compared (RFC 9449 4.3 step 9, RFC 3986 6.2.2-6.2.3): scheme and host lowercased,
/// the default port dropped, an empty path as `/`, without query and fragment. `None` for what
/// is not an absolute http(s) URI.
pub fn normalize_htu(uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next()?;
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::{json, Value};

    const ALGS: [Algorithm; 4] = [
        Algorithm::ES256,
        Algorithm::EdDSA,
        Algorithm::PS256,
        Algorithm::RS256,
    ];

    fn keys(name: &str) -> (EncodingKey, Jwk) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../upstream-mock/keys/");
        let pem = std::fs::read(format!("{dir}{name}.key.pem")).expect("key");
        let enc = match name {
            n if n.starts_with("ec") => EncodingKey::from_ec_pem(&pem),
            n if n.starts_with("ed") => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .expect("encoding key");
        let jwk: Value =
            serde_json::from_slice(&std::fs::read(format!("{dir}{name}.jwk.json")).expect("jwk"))
                .expect("json");
        (enc, serde_json::from_value(jwk).expect("jwk"))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn proof(name: &str, alg: Algorithm, claims: Value, edit: impl FnOnce(&mut Header)) -> String {
        let (enc, jwk) = keys(name);
        let mut h = Header::new(alg);
        h.typ = Some("dpop+jwt".into());
        h.jwk = Some(jwk);
        edit(&mut h);
        encode(&h, &claims, &enc).expect("sign")
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({"jti": "j-1", "htm": "GET", "htu": "https://api.example.com/echo/x",
                           "iat": now(), "ath": B64.encode(Sha256::digest(b"the-token"))});
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    }

    fn expected() -> Expected<'static> {
        Expected {
            method: "GET",
            htu: "https://api.example.com/echo/x",
            access_token: Some("the-token"),
            now: SystemTime::now(),
            window: Duration::from_secs(60),
            algorithms: &ALGS,
        }
    }

    #[test]
    fn rfc_7638_thumbprint_of_its_example_key() {
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .expect("jwk");
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn good_proofs_of_each_algorithm_pass_with_their_thumbprint() {
        for (name, alg) in [
            ("ec-1", Algorithm::ES256),
            ("ed-1", Algorithm::EdDSA),
            ("rsa-1", Algorithm::RS256),
            ("rsa-1", Algorithm::PS256),
        ] {
            let p = verify_proof(&proof(name, alg, claims(json!({})), |_| {}), &expected())
                .unwrap_or_else(|e| panic!("{name} {alg:?}: {e:?}"));
            assert_eq!(Some(p.jkt), thumbprint(&keys(name).1), "{name}");
            assert_eq!(p.jti, "j-1");
        }
    }

    #[test]
    fn every_check_refuses_what_it_should() {
        let e = expected();
        let check = |p: String| verify_proof(&p, &e);
        let ok = |c: Value| proof("ec-1", Algorithm::ES256, claims(c), |_| {});
        assert_eq!(check(ok(json!({"htm": "POST"}))), Err(ProofError::Method));
        assert_eq!(
            check(ok(json!({"htu": "https://api.example.com/other"}))),
            Err(ProofError::Uri)
        );
        // The query and fragment are not part of htu; case and default port are normalised.
        assert!(check(ok(
            json!({"htu": "HTTPS://API.example.com:443/echo/x?a=1#f"})
        ))
        .is_ok());
        assert_eq!(
            check(ok(json!({"iat": now() - 600}))),
            Err(ProofError::Time)
        );
        assert_eq!(
            check(ok(json!({"iat": now() + 600}))),
            Err(ProofError::Time)
        );
        assert_eq!(check(ok(json!({"iat": 1e300}))), Err(ProofError::Time));
        assert_eq!(
            check(ok(json!({"ath": B64.encode(Sha256::digest(b"another"))}))),
            Err(ProofError::TokenHash)
        );
        let no_ath = proof(
            "ec-1",
            Algorithm::ES256,
            json!({"jti": "j", "htm": "GET", "htu": "https://api.example.com/echo/x", "iat": now()}),
            |_| {},
        );
        assert_eq!(check(no_ath), Err(ProofError::TokenHash));
        assert_eq!(
            check(proof("ec-1", Algorithm::ES256, claims(json!({})), |h| h
                .typ =
                Some("JWT".into()))),
            Err(ProofError::Type)
        );
        assert_eq!(
            check(proof("ec-1", Algorithm::ES256, claims(json!({})), |h| h
                .jwk =
                None)),
            Err(ProofError::Key)
        );
        // Another key's jwk in the header: the signature does not verify with it.
        assert_eq!(
            check(proof("ec-1", Algorithm::ES256, claims(json!({})), |h| {
                let mut other: Value = serde_json::to_value(h.jwk.take()).expect("jwk");
                other["x"] = json!("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU");
                other["y"] = json!("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0");
                h.jwk = Some(serde_json::from_value(other).expect("jwk"));
            })),
            Err(ProofError::Signature)
        );
        // An algorithm the key does not fit, or one not allowed.
        let mut only_ec = expected();
        only_ec.algorithms = &[Algorithm::ES256];
        assert_eq!(
            verify_proof(
                &proof("ed-1", Algorithm::EdDSA, claims(json!({})), |_| {}),
                &only_ec
            ),
            Err(ProofError::AlgorithmNotAllowed)
        );
        assert_eq!(
            check(proof("ec-1", Algorithm::ES256, claims(json!({})), |h| h
                .jwk =
                Some(keys("rsa-1").1))),
            Err(ProofError::Key)
        );
    }

    /// Hostile proofs: `alg: none`, HMAC with the public key, a private key in the header, a
    /// huge jwk, a nested JWT, junk. None is accepted, none panics.
    #[test]
    fn hostile_proofs_are_refused() {
        let e = expected();
        let header = |h: Value| B64.encode(h.to_string());
        let body = B64.encode(claims(json!({})).to_string());
        let jwk = serde_json::to_value(keys("ec-1").1).expect("jwk");
        let mut with_d = jwk.clone();
        with_d["d"] = json!("870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE");
        let cases = [
            format!(
                "{}.{body}.",
                header(json!({"typ": "dpop+jwt", "alg": "none", "jwk": jwk}))
            ),
            format!(
                "{}.{body}.c2ln",
                header(json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}))
            ),
            format!(
                "{}.{body}.c2ln",
                header(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": with_d}))
            ),
            format!(
                "{}.{body}.c2ln",
                header(
                    json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256", "x": "A".repeat(5000), "y": "B"}})
                )
            ),
            format!(
                "{}.{body}.c2ln",
                header(
                    json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}})
                )
            ),
            format!(
                "{}.{}.c2ln",
                header(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk})),
                B64.encode("a.b.c")
            ),
            "not-a-jwt".to_string(),
            "a.b.c.d".to_string(),
            String::new(),
        ];
        for (i, p) in cases.iter().enumerate() {
            assert!(verify_proof(p, &e).is_err(), "case {i} accepted");
        }
    }

    #[test]
    fn htu_normalisation() {
        assert_eq!(
            normalize_htu("https://A.example:443").as_deref(),
            Some("https://a.example/")
        );
        assert_eq!(
            normalize_htu("http://a:8080/x?y#z").as_deref(),
            Some("http://a:8080/x")
        );
        assert_eq!(normalize_htu("ftp://a/x"), None);
        assert_eq!(normalize_htu("https://user@a/x"), None);
        assert_eq!(normalize_htu("/relative"), None);
    }
}
