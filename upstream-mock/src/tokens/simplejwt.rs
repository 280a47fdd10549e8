//! HS256 tokens shaped like djangorestframework-simplejwt's defaults:
//! header `{"alg":"HS256","typ":"JWT"}`, claims `token_type`, `exp`, `iat`, `jti`
//! (a uuid4 in hex) and `user_id` (the primary key, a JSON number).

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Map, Value};

use crate::keys;

pub const ACCESS: &str = "access";
pub const REFRESH: &str = "refresh";

pub struct SimpleJwt {
    secret: Vec<u8>,
    access_ttl: u64,
    refresh_ttl: u64,
}

/// Why a refresh token was refused. simplejwt answers all of them the same way; the
/// distinction only helps logs and tests.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshError {
    Invalid(String),
    WrongType,
    NoUser,
}

impl SimpleJwt {
    pub fn new(secret: &[u8], access_ttl: u64, refresh_ttl: u64) -> Self {
        Self {
            secret: secret.to_vec(),
            access_ttl,
            refresh_ttl,
        }
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// `(access, refresh)` for a user, as `TokenObtainPairView` returns.
    /// `(access, refresh)` with the access token bound to a DPoP key when `jkt` is given.
    pub fn pair(
        &self,
        user_id: &Value,
        now: u64,
        jkt: Option<&str>,
    ) -> Result<(String, String), String> {
        Ok((
            self.access(user_id, now, jkt)?,
            self.sign(&claims(REFRESH, user_id, now, self.refresh_ttl as i64))?,
        ))
    }

    /// An access token; with `jkt`, bound to that key (RFC 9449 6.1, `cnf.jkt`).
    pub fn access(&self, user_id: &Value, now: u64, jkt: Option<&str>) -> Result<String, String> {
        let mut c = claims(ACCESS, user_id, now, self.access_ttl as i64);
        if let Some(jkt) = jkt {
            c.insert("cnf".into(), json!({ "jkt": jkt }));
        }
        self.sign(&c)
    }

    fn sign(&self, claims: &Map<String, Value>) -> Result<String, String> {
        keys::sign_hmac(
            Algorithm::HS256,
            None,
            &Value::Object(claims.clone()),
            &self.secret,
        )
    }

    /// Checks a refresh token's signature, `exp` (no leeway, as simplejwt) and
    /// `token_type`, and returns its `user_id`.
    pub fn verify_refresh(&self, token: &str) -> Result<Value, RefreshError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(
            token,
            &DecodingKey::from_secret(&self.secret),
            &validation,
        )
        .map_err(|e| RefreshError::Invalid(e.to_string()))?;
        if data.claims.get("token_type").and_then(Value::as_str) != Some(REFRESH) {
            return Err(RefreshError::WrongType);
        }
        match data.claims.get("user_id") {
            Some(id) if !id.is_null() => Ok(id.clone()),
            _ => Err(RefreshError::NoUser),
        }
    }
}

/// simplejwt's claim set, in its key order. `ttl` may be negative (an expired token).
pub fn claims(token_type: &str, user_id: &Value, now: u64, ttl: i64) -> Map<String, Value> {
    let exp = (now as i64).saturating_add(ttl).max(0);
    let mut map = Map::new();
    map.insert("token_type".into(), json!(token_type));
    map.insert("exp".into(), json!(exp));
    map.insert("iat".into(), json!(now));
    map.insert(
        "jti".into(),
        json!(uuid::Uuid::new_v4().simple().to_string()),
    );
    map.insert("user_id".into(), user_id.clone());
    map
}

/// A subject as simplejwt would store it: a JSON number when it is one.
pub fn user_id_value(sub: &str) -> Value {
    sub.parse::<u64>().map_or_else(|_| json!(sub), |n| json!(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::unix_now;

    fn decode(token: &str, secret: &[u8]) -> Map<String, Value> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        jsonwebtoken::decode::<Map<String, Value>>(token, &DecodingKey::from_secret(secret), &v)
            .expect("valid token")
            .claims
    }

    #[test]
    fn pair_has_simplejwt_claims() {
        let jwt = SimpleJwt::new(b"s", 900, 86_400);
        let now = unix_now();
        let (access, refresh) = jwt.pair(&json!(42), now, None).expect("pair");
        let a = decode(&access, b"s");
        assert_eq!(a["token_type"], "access");
        assert_eq!(a["user_id"], 42);
        assert_eq!(a["iat"], now);
        assert_eq!(a["exp"], now + 900);
        let jti = a["jti"].as_str().expect("jti");
        assert_eq!(jti.len(), 32);
        assert!(jti.bytes().all(|b| b.is_ascii_hexdigit()));
        let keys: Vec<&str> = a.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5);
        let r = decode(&refresh, b"s");
        assert_eq!(r["token_type"], "refresh");
        assert_eq!(r["exp"], now + 86_400);
        assert_ne!(r["jti"], a["jti"]);
        let header = jsonwebtoken::decode_header(&access).expect("header");
        assert_eq!(
            (header.alg, header.typ.as_deref(), header.kid),
            (Algorithm::HS256, Some("JWT"), None)
        );
    }

    #[test]
    fn refresh_round_trip_and_rejections() {
        let jwt = SimpleJwt::new(b"s", 900, 86_400);
        let now = unix_now();
        let (access, refresh) = jwt.pair(&json!(7), now, None).expect("pair");
        assert_eq!(jwt.verify_refresh(&refresh), Ok(json!(7)));
        let new_access = jwt.access(&json!(7), now, None).expect("access");
        assert_eq!(decode(&new_access, b"s")["user_id"], 7);

        assert_eq!(jwt.verify_refresh(&access), Err(RefreshError::WrongType));
        let other = SimpleJwt::new(b"other", 900, 86_400);
        assert!(matches!(
            other.verify_refresh(&refresh),
            Err(RefreshError::Invalid(_))
        ));
        let expired = keys::sign_hmac(
            Algorithm::HS256,
            None,
            &Value::Object(claims(REFRESH, &json!(7), now - 100, 10)),
            b"s",
        )
        .expect("sign");
        assert!(matches!(
            jwt.verify_refresh(&expired),
            Err(RefreshError::Invalid(_))
        ));
        assert!(matches!(
            jwt.verify_refresh("not.a.jwt"),
            Err(RefreshError::Invalid(_))
        ));
    }

    #[test]
    fn user_ids_are_numbers_when_numeric() {
        assert_eq!(user_id_value("42"), json!(42));
        assert_eq!(user_id_value("service:ci"), json!("service:ci"));
        assert_eq!(claims(ACCESS, &json!(1), 100, -500)["exp"], 0);
    }
}
