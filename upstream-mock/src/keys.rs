//! The asymmetric test keys, the JWKS document built from them, and token signing.
//!
//! The public JWKs are precomputed by `keys/generate.sh` and committed next to the PEM
//! files, so the binary needs no RSA/EC arithmetic of its own; at load time every key
//! signs a probe token that is verified against its JWK, so a mismatched pair (say, a
//! hand-edited `--keys-dir`) fails at startup instead of in a confusing test.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc,
    },
};

use axum::{extract::State, http::StatusCode, response::Response};
use jsonwebtoken::{jwk::Jwk, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

use crate::{app::AppState, respond};

/// The kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyFamily {
    /// The family for an asymmetric algorithm; `None` for the HMAC ones.
    pub fn for_alg(alg: Algorithm) -> Option<Self> {
        use Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => None,
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Self::Rsa),
            ES256 => Some(Self::EcP256),
            ES384 => Some(Self::EcP384),
            EdDSA => Some(Self::Ed25519),
        }
    }

    /// An algorithm of this family, used for the load-time self check.
    fn probe_alg(self) -> Algorithm {
        match self {
            Self::Rsa => Algorithm::RS256,
            Self::EcP256 => Algorithm::ES256,
            Self::EcP384 => Algorithm::ES384,
            Self::Ed25519 => Algorithm::EdDSA,
        }
    }
}

/// Every key the mock knows, in JWKS order. `rsa-2` is the rotation target.
pub const KEY_IDS: [(&str, KeyFamily); 5] = [
    ("rsa-1", KeyFamily::Rsa),
    ("rsa-2", KeyFamily::Rsa),
    ("ec-1", KeyFamily::EcP256),
    ("ec384-1", KeyFamily::EcP384),
    ("ed-1", KeyFamily::Ed25519),
];

macro_rules! embedded {
    ($kid:literal) => {
        (
            $kid,
            include_str!(concat!("../keys/", $kid, ".key.pem")),
            include_str!(concat!("../keys/", $kid, ".jwk.json")),
        )
    };
}

/// (kid, private PKCS#8 PEM, public JWK JSON), compiled in so the binary is self-contained.
const EMBEDDED: [(&str, &str, &str); 5] = [
    embedded!("rsa-1"),
    embedded!("rsa-2"),
    embedded!("ec-1"),
    embedded!("ec384-1"),
    embedded!("ed-1"),
];

pub struct KeyPair {
    pub kid: &'static str,
    pub family: KeyFamily,
    encoding: EncodingKey,
    /// The public JWK exactly as served.
    pub jwk: Value,
}

pub struct KeySet {
    keys: Vec<KeyPair>,
}

impl KeySet {
    /// The compiled-in keys, or the same file names read from `dir`.
    pub fn load(dir: Option<&Path>) -> Result<Self, String> {
        let mut keys = Vec::with_capacity(KEY_IDS.len());
        for ((kid, family), (_, pem, jwk)) in KEY_IDS.into_iter().zip(EMBEDDED) {
            let pair = match dir {
                None => KeyPair::new(kid, family, pem, jwk),
                Some(dir) => {
                    let read = |name: String| {
                        std::fs::read_to_string(dir.join(&name))
                            .map_err(|e| format!("{}: {e}", dir.join(&name).display()))
                    };
                    KeyPair::new(
                        kid,
                        family,
                        &read(format!("{kid}.key.pem"))?,
                        &read(format!("{kid}.jwk.json"))?,
                    )
                }
            };
            keys.push(pair.map_err(|e| format!("key {kid}: {e}"))?);
        }
        Ok(Self { keys })
    }

    pub fn get(&self, kid: &str) -> Option<&KeyPair> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The first key of a family: what `mint` uses when no kid is given.
    pub fn first_of(&self, family: KeyFamily) -> Option<&KeyPair> {
        self.keys.iter().find(|k| k.family == family)
    }
}

impl KeyPair {
    fn new(kid: &'static str, family: KeyFamily, pem: &str, jwk: &str) -> Result<Self, String> {
        let pem = pem.as_bytes();
        let encoding = match family {
            KeyFamily::Rsa => EncodingKey::from_rsa_pem(pem),
            KeyFamily::EcP256 | KeyFamily::EcP384 => EncodingKey::from_ec_pem(pem),
            KeyFamily::Ed25519 => EncodingKey::from_ed_pem(pem),
        }
        .map_err(|e| format!("private key: {e}"))?;
        let jwk: Value = serde_json::from_str(jwk).map_err(|e| format!("jwk: {e}"))?;
        if jwk.get("kid").and_then(Value::as_str) != Some(kid) {
            return Err(format!("jwk kid is not {kid:?}"));
        }
        let pair = Self {
            kid,
            family,
            encoding,
            jwk,
        };
        pair.self_check()?;
        Ok(pair)
    }

    /// Signs a probe with the private key and verifies it with the public JWK.
    fn self_check(&self) -> Result<(), String> {
        let alg = self.family.probe_alg();
        let token = self
            .sign(alg, Some(self.kid), &json!({"probe": true}))
            .map_err(|e| format!("signing probe: {e}"))?;
        let jwk: Jwk = serde_json::from_value(self.jwk.clone()).map_err(|e| format!("jwk: {e}"))?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("jwk: {e}"))?;
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        jsonwebtoken::decode::<Value>(&token, &key, &validation)
            .map(drop)
            .map_err(|e| format!("private key does not match its jwk: {e}"))
    }

    pub fn sign(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        claims: &Value,
    ) -> Result<String, String> {
        if KeyFamily::for_alg(alg) != Some(self.family) {
            return Err(format!("key {} cannot sign {alg:?}", self.kid));
        }
        sign_with(alg, kid, claims, &self.encoding)
    }

    /// Signs under a header of the caller's (a DPoP proof's, with its `typ` and `jwk`).
    pub fn sign_header(&self, header: &Header, claims: &Value) -> Result<String, String> {
        if KeyFamily::for_alg(header.alg) != Some(self.family) {
            return Err(format!("key {} cannot sign {:?}", self.kid, header.alg));
        }
        jsonwebtoken::encode(header, claims, &self.encoding).map_err(|e| e.to_string())
    }
}

/// Signs `claims` verbatim under a `{"alg", "typ": "JWT", "kid"?}` header.
pub fn sign_with(
    alg: Algorithm,
    kid: Option<&str>,
    claims: &Value,
    key: &EncodingKey,
) -> Result<String, String> {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).map_err(|e| e.to_string())
}

/// HMAC-signs `claims` with a raw secret.
pub fn sign_hmac(
    alg: Algorithm,
    kid: Option<&str>,
    claims: &Value,
    secret: &[u8],
) -> Result<String, String> {
    sign_with(alg, kid, claims, &EncodingKey::from_secret(secret))
}

/// Rotation stages of the RSA key in the JWKS.
const STAGE_INITIAL: u8 = 0; // rsa-1
const STAGE_ROTATED: u8 = 1; // rsa-1 + rsa-2
const STAGE_DROPPED: u8 = 2; // rsa-2 only

/// The JWKS endpoint's state: which RSA keys are published and whether it is failing.
pub struct Jwks {
    keys: KeySet,
    stage: AtomicU8,
    failing: AtomicBool,
}

impl Jwks {
    pub fn new(keys: KeySet) -> Self {
        Self {
            keys,
            stage: AtomicU8::new(STAGE_INITIAL),
            failing: AtomicBool::new(false),
        }
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    fn published(&self, kid: &str) -> bool {
        match (kid, self.stage.load(Ordering::SeqCst)) {
            ("rsa-1", stage) => stage != STAGE_DROPPED,
            ("rsa-2", stage) => stage != STAGE_INITIAL,
            _ => true,
        }
    }

    /// `{"keys": [...]}` with the currently published public keys.
    pub fn document(&self) -> Value {
        let keys: Vec<&Value> = self
            .keys
            .keys
            .iter()
            .filter(|k| self.published(k.kid))
            .map(|k| &k.jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// Publishes rsa-2 (and makes it the key `mint` uses); with `drop_old` rsa-1 is
    /// withdrawn too.
    pub fn rotate(&self, drop_old: bool) {
        let stage = if drop_old {
            STAGE_DROPPED
        } else {
            STAGE_ROTATED
        };
        self.stage.store(stage, Ordering::SeqCst);
    }

    /// Back to the initial key set and a working endpoint.
    pub fn reset(&self) {
        self.stage.store(STAGE_INITIAL, Ordering::SeqCst);
        self.failing.store(false, Ordering::SeqCst);
    }

    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// The key a family signs with now: after a rotation that is the new RSA key.
    pub fn current(&self, family: KeyFamily) -> Option<&KeyPair> {
        if family == KeyFamily::Rsa && self.stage.load(Ordering::SeqCst) != STAGE_INITIAL {
            return self.keys.get("rsa-2");
        }
        self.keys.first_of(family)
    }

    pub fn rotation_state(&self) -> Value {
        let published: Vec<&str> = KEY_IDS
            .iter()
            .map(|(kid, _)| *kid)
            .filter(|kid| self.published(kid))
            .collect();
        json!({ "published": published, "failing": self.is_failing() })
    }
}

/// `GET /.well-known/jwks.json`: the published keys, or 503 while failing on purpose.
pub async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    if state.jwks.is_failing() {
        return respond::detail(
            StatusCode::SERVICE_UNAVAILABLE,
            "JWKS temporarily unavailable (mock failure switch is on).",
        );
    }
    respond::json(StatusCode::OK, state.jwks.document())
}

/// What `POST /__mock/mint` and the `mint` subcommand ask for.
pub struct MintRequest<'a> {
    pub alg: Algorithm,
    /// For asymmetric algorithms: the key to sign with (and the header kid). For HMAC:
    /// only the header kid.
    pub kid: Option<&'a str>,
    /// Leave `kid` out of the header (the key is still chosen as usual).
    pub omit_kid: bool,
    /// HMAC secret override.
    pub secret: Option<&'a [u8]>,
    pub claims: &'a Map<String, Value>,
}

/// Signs a token for tests; claims are used verbatim.
pub fn mint(jwks: &Jwks, default_secret: &[u8], req: &MintRequest<'_>) -> Result<String, String> {
    let claims = Value::Object(req.claims.clone());
    match KeyFamily::for_alg(req.alg) {
        None => {
            let kid = req.kid.filter(|_| !req.omit_kid);
            sign_hmac(req.alg, kid, &claims, req.secret.unwrap_or(default_secret))
        }
        Some(family) => {
            let key = match req.kid {
                Some(kid) => jwks
                    .keys()
                    .get(kid)
                    .ok_or_else(|| format!("unknown kid {kid:?}; known: {}", known_kids()))?,
                None => jwks
                    .current(family)
                    .ok_or_else(|| format!("no key for {:?}", req.alg))?,
            };
            let kid = (!req.omit_kid).then_some(key.kid);
            key.sign(req.alg, kid, &claims)
        }
    }
}

fn known_kids() -> String {
    KEY_IDS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwks() -> Jwks {
        Jwks::new(KeySet::load(None).expect("embedded keys load"))
    }

    fn served_kids(j: &Jwks) -> Vec<String> {
        j.document()["keys"]
            .as_array()
            .expect("keys array")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    /// Verifies `token` against the key the JWKS publishes under the header's kid.
    fn verify_with_jwks(doc: &Value, token: &str, alg: Algorithm) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let kid = header.kid.ok_or("no kid")?;
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
        let jwk = set.find(&kid).ok_or("kid not published")?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        let mut v = Validation::new(alg);
        v.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }

    fn claims() -> Map<String, Value> {
        let exp = crate::tokens::unix_now() + 600;
        json!({"sub": "42", "exp": exp, "scope": "read"})
            .as_object()
            .cloned()
            .expect("object")
    }

    #[test]
    fn served_jwks_verify_tokens_of_every_asymmetric_alg() {
        let j = jwks();
        j.rotate(false); // publish rsa-2 too so both RSA keys are covered
        let doc = j.document();
        let claims = claims();
        use Algorithm::*;
        for (alg, kid) in [
            (RS256, "rsa-1"),
            (RS384, "rsa-2"),
            (RS512, "rsa-1"),
            (PS256, "rsa-2"),
            (PS384, "rsa-1"),
            (PS512, "rsa-1"),
            (ES256, "ec-1"),
            (ES384, "ec384-1"),
            (EdDSA, "ed-1"),
        ] {
            let req = MintRequest {
                alg,
                kid: Some(kid),
                omit_kid: false,
                secret: None,
                claims: &claims,
            };
            let token = mint(&j, b"unused", &req).expect("mint");
            let got = verify_with_jwks(&doc, &token, alg)
                .unwrap_or_else(|e| panic!("{alg:?}/{kid}: {e}"));
            assert_eq!(got["sub"], "42");
        }
    }

    #[test]
    fn jwk_shapes_are_standard() {
        let doc = jwks().document();
        let keys = doc["keys"].as_array().expect("keys");
        let rsa = keys.iter().find(|k| k["kid"] == "rsa-1").expect("rsa-1");
        assert_eq!(
            (
                rsa["kty"].as_str(),
                rsa["use"].as_str(),
                rsa["alg"].as_str()
            ),
            (Some("RSA"), Some("sig"), Some("RS256"))
        );
        assert_eq!(rsa["e"], "AQAB");
        let ec = keys.iter().find(|k| k["kid"] == "ec-1").expect("ec-1");
        assert_eq!(
            (ec["kty"].as_str(), ec["crv"].as_str(), ec["alg"].as_str()),
            (Some("EC"), Some("P-256"), Some("ES256"))
        );
        let ed = keys.iter().find(|k| k["kid"] == "ed-1").expect("ed-1");
        assert_eq!(
            (ed["kty"].as_str(), ed["crv"].as_str(), ed["alg"].as_str()),
            (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
        );
        // No private material leaks into the document.
        assert!(keys.iter().all(|k| k.get("d").is_none()));
    }

    #[test]
    fn rotation_publishes_then_drops() {
        let j = jwks();
        assert_eq!(served_kids(&j), ["rsa-1", "ec-1", "ec384-1", "ed-1"]);
        assert_eq!(j.current(KeyFamily::Rsa).map(|k| k.kid), Some("rsa-1"));
        j.rotate(false);
        assert_eq!(
            served_kids(&j),
            ["rsa-1", "rsa-2", "ec-1", "ec384-1", "ed-1"]
        );
        assert_eq!(j.current(KeyFamily::Rsa).map(|k| k.kid), Some("rsa-2"));
        j.rotate(true);
        assert_eq!(served_kids(&j), ["rsa-2", "ec-1", "ec384-1", "ed-1"]);
        j.set_failing(true);
        assert!(j.is_failing());
        j.reset();
        assert_eq!(served_kids(&j), ["rsa-1", "ec-1", "ec384-1", "ed-1"]);
        assert!(!j.is_failing());
    }

    #[test]
    fn default_key_follows_rotation_and_unpublished_kid_fails_verification() {
        let j = jwks();
        let claims = claims();
        let req = MintRequest {
            alg: Algorithm::RS256,
            kid: None,
            omit_kid: false,
            secret: None,
            claims: &claims,
        };
        let before = mint(&j, b"", &req).expect("mint");
        assert_eq!(
            jsonwebtoken::decode_header(&before)
                .expect("header")
                .kid
                .as_deref(),
            Some("rsa-1")
        );
        // rsa-2 can be minted before it is published: the "unknown kid" case.
        let early = MintRequest {
            kid: Some("rsa-2"),
            ..req
        };
        let early = mint(&j, b"", &early).expect("mint");
        assert!(verify_with_jwks(&j.document(), &early, Algorithm::RS256).is_err());
        j.rotate(false);
        let after = mint(&j, b"", &req).expect("mint");
        assert_eq!(
            jsonwebtoken::decode_header(&after)
                .expect("header")
                .kid
                .as_deref(),
            Some("rsa-2")
        );
        assert!(verify_with_jwks(&j.document(), &after, Algorithm::RS256).is_ok());
    }

    #[test]
    fn mint_rejects_mismatched_or_unknown_keys() {
        let j = jwks();
        let claims = claims();
        let req = MintRequest {
            alg: Algorithm::ES256,
            kid: Some("rsa-1"),
            omit_kid: false,
            secret: None,
            claims: &claims,
        };
        assert!(mint(&j, b"", &req).is_err());
        let req = MintRequest {
            kid: Some("nope"),
            ..req
        };
        assert!(mint(&j, b"", &req).is_err());
        let req = MintRequest {
            alg: Algorithm::EdDSA,
            kid: None,
            omit_kid: true,
            ..req
        };
        let token = mint(&j, b"", &req).expect("mint");
        assert_eq!(
            jsonwebtoken::decode_header(&token).expect("header").kid,
            None
        );
    }

    #[test]
    fn hmac_mint_uses_given_secret_and_kid() {
        let j = jwks();
        let claims = claims();
        let req = MintRequest {
            alg: Algorithm::HS384,
            kid: Some("k1"),
            omit_kid: false,
            secret: Some(b"s3cret"),
            claims: &claims,
        };
        let token = mint(&j, b"default", &req).expect("mint");
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::HS384, Some("k1"))
        );
        let v = Validation::new(Algorithm::HS384);
        assert!(
            jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(b"s3cret"), &v).is_ok()
        );
        assert!(
            jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(b"default"), &v)
                .is_err()
        );
    }

    #[test]
    fn keys_dir_override_reads_the_same_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("keys");
        let set = KeySet::load(Some(&dir)).expect("committed key files load");
        assert!(set.get("ed-1").is_some());
        let missing = KeySet::load(Some(Path::new("/nonexistent-upstream-mock-keys")));
        assert!(missing.is_err());
    }
}
