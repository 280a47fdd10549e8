//! Fuzz targets: each takes arbitrary bytes and must neither panic nor break an invariant.
//! `src/bin/fuzz.rs` drives them on stable Rust (random and mutated inputs from `seeds/`),
//! and the tests below replay every saved crash in `regressions/` so a fix stays fixed.

use authgate::config::compile::KeyFamily;
use authgate::config::env::Env;
use authgate::config::model::{JwtSpec, KeyMaterial, Secret, StaticKey};
use authgate::config::units::{parse_duration, ByteSize, Rate};
use authgate::path::normalize_path;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

pub const TARGETS: [&str; 5] = ["token", "config", "units", "path", "dpop"];

pub fn run(target: &str, data: &[u8]) {
    match target {
        "token" => token(data),
        "config" => config(data),
        "units" => units(data),
        "path" => path(data),
        "dpop" => dpop(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Authorization parsing, JWT shape and header decoding, and full verification.
pub fn token(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        headers.insert(http::header::AUTHORIZATION, v);
        let _ = authgate::auth::credential(&headers);
    }
    let _ = authgate::auth::jwt::is_jwt_shaped(&s);
    if let Ok(h) = jsonwebtoken::decode_header(&s) {
        // Any algorithm the header names maps to exactly one key family.
        let _ = KeyFamily::of(h.alg);
    }
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static VERIFIER: OnceLock<authgate::auth::jwt::JwtVerifier> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    });
    let v = VERIFIER.get_or_init(|| {
        let spec = JwtSpec {
            algorithms: vec![jsonwebtoken::Algorithm::HS256],
            keys: vec![StaticKey {
                kid: None,
                material: KeyMaterial::Hmac(Secret::new(b"fuzz-secret".to_vec())),
            }],
            jwks_url: None,
            discovery: false,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(5),
            issuer: None,
            audience: vec![],
            leeway: Duration::ZERO,
            subject_claim: "sub".into(),
            scopes_claim: "scope".into(),
            required_claims: vec![authgate::config::model::ClaimRule {
                claim: "token_type".into(),
                allowed: vec!["access".into()],
            }],
            typ: Some("at+jwt".into()),
            ca: None,
            dpop: Default::default(),
        };
        authgate::auth::jwt::JwtVerifier::new("fuzz", &spec, None).expect("verifier")
    });
    let _ = rt.block_on(v.verify(&s));
}

/// DPoP proofs (the value of a `DPoP` header): refused or accepted, never a panic; one that
/// passes carries a thumbprint and an id the replay set can key on.
pub fn dpop(data: &[u8]) {
    use authgate::auth::dpop::{verify_proof, Expected};
    use jsonwebtoken::Algorithm;
    let s = String::from_utf8_lossy(data);
    let want = Expected {
        method: "GET",
        htu: "https://api.example.com/x",
        access_token: Some("tok"),
        // Any iat of the last and next years passes, so mutations reach the later checks.
        now: std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        window: Duration::from_secs(86_400 * 365 * 2),
        algorithms: &[
            Algorithm::ES256,
            Algorithm::EdDSA,
            Algorithm::PS256,
            Algorithm::RS256,
        ],
    };
    if let Ok(p) = verify_proof(&s, &want) {
        assert_eq!(p.jkt.len(), 43, "a SHA-256 thumbprint, base64url");
        assert!(!p.jti.is_empty() && p.jti.bytes().all(|b| b.is_ascii_graphic()));
    }
    let _ = authgate::auth::dpop::normalize_htu(&s);
}

struct FuzzEnv;

impl Env for FuzzEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name.len() < 8).then(|| "x".repeat(name.len() + 1))
    }
}

/// The whole configuration pipeline on arbitrary text: errors, never panics.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = authgate::config::load_str(&text, Path::new("/nonexistent"), &FuzzEnv);
    let empty: HashMap<String, String> = HashMap::new();
    let _ = authgate::config::env::expand(&text, &empty);
}

/// Durations, sizes and rates: a value that parses must be self-consistent.
pub fn units(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let _ = parse_duration(&s);
    let _ = s.parse::<ByteSize>();
    if let Ok(r) = s.parse::<Rate>() {
        assert!(r.count > 0);
        assert!(r.interval() <= r.per);
    }
}

/// Path normalisation: idempotent, absolute, and free of dot segments and empty segments.
pub fn path(data: &[u8]) {
    let Ok(out) = normalize_path(data) else {
        return;
    };
    assert!(out.starts_with('/'), "{out:?}");
    assert!(!out.contains("//"), "{out:?}");
    for seg in out.split('/') {
        assert!(seg != "." && seg != "..", "{out:?}");
    }
    assert!(out.bytes().all(|b| b.is_ascii_graphic()), "{out:?}");
    let again = normalize_path(out.as_bytes()).expect("a normal path stays valid");
    assert_eq!(again, out, "not idempotent");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every crash input ever saved by the driver is replayed here.
    #[test]
    fn regressions_stay_fixed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
        let mut n = 0;
        for target in TARGETS {
            let Ok(dir) = std::fs::read_dir(root.join(target)) else {
                continue;
            };
            for entry in dir.flatten() {
                let data = std::fs::read(entry.path()).expect("read");
                run(target, &data);
                n += 1;
            }
        }
        // The seed corpora run too, so this test is never empty.
        for target in TARGETS {
            let seeds = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("seeds")
                .join(target);
            for entry in std::fs::read_dir(seeds).expect("seeds").flatten() {
                run(target, &std::fs::read(entry.path()).expect("read"));
                n += 1;
            }
        }
        assert!(n >= TARGETS.len());
    }
}
