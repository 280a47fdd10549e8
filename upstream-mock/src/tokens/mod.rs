//! The LMS's authentication endpoints: simplejwt (`/api/token/...`) and knox
//! (`/api/auth/...`), including the RFC 7662 introspection endpoint the gateway calls.

pub mod knox;
pub mod simplejwt;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::json;

use crate::{
    app::AppState,
    cli::ClientCredentials,
    respond::{self, ApiError},
};
use knox::OpaqueToken;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    now_ms() / 1000
}

/// Milliseconds since the Unix epoch: knox expiry is kept at this precision so that
/// tests with one-second lifetimes are not off by up to a second.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn server_error(what: &str, e: &str) -> ApiError {
    tracing::error!(error = e, "{what}");
    ApiError::detail(
        StatusCode::INTERNAL_SERVER_ERROR,
        "A server error occurred.",
    )
}

/// The key a `DPoP` proof sent to the token endpoint binds the access token to (RFC 9449 5);
/// `None` without one, 400 `invalid_dpop_proof` for a bad one.
fn dpop_binding(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(proof) = headers.get("dpop") else {
        return Ok(None);
    };
    let proof = proof.to_str().unwrap_or_default();
    crate::dpop::bound_key(proof).map(Some).map_err(|e| {
        tracing::debug!(reason = e, "DPoP proof refused at the token endpoint");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_dpop_proof", "error_description": e}),
        )
    })
}

/// A bound token's answer says `token_type: DPoP` (RFC 9449 5); others stay as simplejwt
/// answers them.
fn with_token_type(mut answer: serde_json::Value, jkt: &Option<String>) -> serde_json::Value {
    if jkt.is_some() {
        answer["token_type"] = json!("DPoP");
    }
    answer
}

/// `POST /api/token/` `{"username","password"}` -> `{"access","refresh"}`; with a `DPoP`
/// proof header, the access token is bound to the proof's key.
pub async fn obtain_pair(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let jkt = dpop_binding(&headers)?;
    let map = respond::json_object(&body)?;
    let [username, password] = respond::required_strings(&map, ["username", "password"])?;
    let user = state
        .users
        .authenticate(username, password)
        .ok_or_else(|| {
            ApiError::detail(
                StatusCode::UNAUTHORIZED,
                "No active account found with the given credentials",
            )
        })?;
    let (access, refresh) = state
        .jwt
        .pair(&json!(user.id), unix_now(), jkt.as_deref())
        .map_err(|e| server_error("signing token pair", &e))?;
    Ok(respond::json(
        StatusCode::OK,
        with_token_type(json!({ "refresh": refresh, "access": access }), &jkt),
    ))
}

/// `POST /api/token/refresh/` `{"refresh"}` -> `{"access"}`.
pub async fn refresh(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let jkt = dpop_binding(&headers)?;
    let map = respond::json_object(&body)?;
    let [token] = respond::required_strings(&map, ["refresh"])?;
    let user_id = state.jwt.verify_refresh(token).map_err(|e| {
        tracing::debug!(reason = ?e, "refresh token refused");
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            json!({"detail": "Token is invalid or expired", "code": "token_not_valid"}),
        )
    })?;
    let access = state
        .jwt
        .access(&user_id, unix_now(), jkt.as_deref())
        .map_err(|e| server_error("signing access token", &e))?;
    Ok(respond::json(
        StatusCode::OK,
        with_token_type(json!({ "access": access }), &jkt),
    ))
}

/// `POST /api/auth/login/` with JSON `{"username","password"}` (or, as knox's default
/// `LoginView` expects, HTTP Basic credentials) -> `{"expiry", "token"}`.
pub async fn knox_login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let basic = respond::authorization(&headers, &["Basic"]).and_then(decode_basic);
    let user = match &basic {
        Some((u, p)) => state.users.authenticate(u, p),
        None => {
            let map = respond::json_object(&body)?;
            let [u, p] = respond::required_strings(&map, ["username", "password"])?;
            state.users.authenticate(u, p)
        }
    };
    let user = user
        .ok_or_else(|| ApiError::detail(StatusCode::UNAUTHORIZED, "Invalid username/password."))?;
    let now = now_ms();
    let entry = OpaqueToken {
        sub: user.id.to_string(),
        username: Some(user.username.clone()),
        scope: knox::LOGIN_SCOPE.to_owned(),
        client_id: knox::LOGIN_CLIENT_ID.to_owned(),
        issued_at_ms: now,
        expires_at_ms: now.saturating_add(state.access_ttl.saturating_mul(1000)),
        omit_sub: false,
        extra: Default::default(),
    };
    let expiry = rfc3339_ms(entry.expires_at_ms);
    let token = state.knox.issue(entry, now);
    Ok(respond::json(
        StatusCode::OK,
        json!({ "expiry": expiry, "token": token }),
    ))
}

/// `POST /api/auth/logout/` with `Authorization: Token <t>` (or `Bearer <t>`) -> 204.
///
/// A knox token in the store is revoked. Any other presented credential (a JWT, say)
/// is accepted as well, so that the gateway's `revokes_token` route can be tested
/// with every kind of token it authenticates; only a missing credential is a 401.
pub async fn knox_logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(token) = respond::authorization(&headers, &["Token", "Bearer"]) else {
        return respond::detail(
            StatusCode::UNAUTHORIZED,
            "Authentication credentials were not provided.",
        );
    };
    let revoked = state.knox.revoke(token);
    tracing::debug!(revoked, "logout");
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /api/auth/introspect/` (RFC 7662): form `token=...`, HTTP Basic client auth.
pub async fn introspect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = respond::authorization(&headers, &["Basic"]).and_then(decode_basic);
    if !client.is_some_and(|(id, secret)| client_matches(&state.introspection_client, &id, &secret))
    {
        let mut response = respond::json(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client", "detail": "Invalid client credentials."}),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"introspection\""),
        );
        return response;
    }
    let form = respond::form_pairs(&String::from_utf8_lossy(&body));
    let Some(token) = form.iter().find_map(|(k, v)| (k == "token").then_some(v)) else {
        return respond::json(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "detail": "The token parameter is required."}),
        );
    };
    let Some(entry) = state.knox.active(token, now_ms()) else {
        return respond::json(StatusCode::OK, json!({ "active": false }));
    };
    let mut answer = json!({
        "active": true,
        "sub": entry.sub,
        "scope": entry.scope,
        "exp": entry.exp(),
        "iat": entry.iat(),
        "client_id": entry.client_id,
        "token_type": "Bearer",
    });
    if let (Some(username), Some(obj)) = (entry.username, answer.as_object_mut()) {
        obj.insert("username".into(), json!(username));
    }
    if let Some(obj) = answer.as_object_mut() {
        for (k, v) in entry.extra {
            obj.entry(k).or_insert(v);
        }
        if entry.omit_sub {
            obj.remove("sub");
        }
    }
    respond::json(StatusCode::OK, answer)
}

/// RFC 6749 §2.3.1 has clients form-urlencode their id and secret before the Basic
/// encoding; many clients skip that, so both spellings are accepted.
fn client_matches(expected: &ClientCredentials, id: &str, secret: &str) -> bool {
    let raw = id == expected.id && secret == expected.secret;
    raw || (respond::form_decode(id) == expected.id
        && respond::form_decode(secret) == expected.secret)
}

/// `base64(id:secret)` -> `(id, secret)`.
fn decode_basic(credential: &str) -> Option<(String, String)> {
    let raw = STANDARD.decode(credential.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        let encoded = STANDARD.encode("authgate:se:cret");
        assert_eq!(
            decode_basic(&encoded),
            Some(("authgate".into(), "se:cret".into()))
        );
        assert_eq!(decode_basic("!!!"), None);
        assert_eq!(decode_basic(&STANDARD.encode("nocolon")), None);
    }

    #[test]
    fn client_credentials_raw_or_form_encoded() {
        let expected = ClientCredentials {
            id: "gw".into(),
            secret: "a b+c".into(),
        };
        assert!(client_matches(&expected, "gw", "a b+c"));
        assert!(client_matches(&expected, "gw", "a+b%2Bc"));
        assert!(!client_matches(&expected, "gw", "a b"));
        assert!(!client_matches(&expected, "other", "a b+c"));
    }

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(rfc3339_ms(1_500), "1970-01-01T00:00:01.500000Z");
    }
}
