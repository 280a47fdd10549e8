//! Verification keys, each tied to the algorithm family it may be used with.

use crate::config::compile::KeyFamily;
use crate::config::model::{KeyMaterial, StaticKey};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

pub struct VerifyKey {
    pub kid: Option<String>,
    pub family: KeyFamily,
    /// The `alg` a JWK pins its key to, if it says.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl VerifyKey {
    pub fn from_static(k: &StaticKey) -> Result<Self, String> {
        let (family, key) = match &k.material {
            KeyMaterial::Hmac(s) => (KeyFamily::Hmac, DecodingKey::from_secret(s.expose())),
            KeyMaterial::RsaPem(p) => (
                KeyFamily::Rsa,
                DecodingKey::from_rsa_pem(p).map_err(|e| e.to_string())?,
            ),
            KeyMaterial::EcPem(p) => (
                KeyFamily::Ec,
                DecodingKey::from_ec_pem(p).map_err(|e| e.to_string())?,
            ),
            KeyMaterial::EdPem(p) => (
                KeyFamily::Ed,
                DecodingKey::from_ed_pem(p).map_err(|e| e.to_string())?,
            ),
        };
        Ok(VerifyKey {
            kid: k.kid.clone(),
            family,
            alg: None,
            key,
        })
    }

    /// A public key from a JWKS. Symmetric (`oct`) keys are refused: a JWKS is public, so a
    /// secret in it would let anyone mint tokens.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, String> {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 | EllipticCurve::P384 => KeyFamily::Ec,
                _ => return Err("unsupported elliptic curve".into()),
            },
            AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Ed,
            AlgorithmParameters::OctetKey(_) => {
                return Err("symmetric keys are not accepted from a JWKS".into())
            }
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(alg_of(a).ok_or("unsupported key algorithm")?),
        };
        if alg.is_some_and(|a| KeyFamily::of(a) != family) {
            return Err("the key's alg does not match its key type".into());
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        Ok(VerifyKey {
            kid: jwk.common.key_id.clone(),
            family,
            alg,
            key,
        })
    }

    /// Whether this key may check a token with this algorithm and key id.
    pub fn accepts(&self, family: KeyFamily, alg: Algorithm, kid: Option<&str>) -> bool {
        if self.family != family || self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match (kid, &self.kid) {
            (Some(want), Some(have)) => want == have,
            // A key without a kid answers for any token of its family; a token without a kid
            // may be checked by any key of its family.
            _ => true,
        }
    }
}

fn alg_of(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
