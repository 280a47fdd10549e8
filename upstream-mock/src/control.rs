//! Test-only endpoints under `/__mock/`: mint tokens, steer the JWKS and health
//! endpoints, and read or reset the request counters. They are not counted in the
//! stats and need no authentication (the mock only ever listens on loopback in tests).

use std::sync::{atomic::Ordering, Arc};

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use jsonwebtoken::Algorithm;
use serde_json::{json, Map, Value};

use crate::{
    app::AppState,
    keys::{self, MintRequest},
    respond::{self, ApiError},
    tokens::{knox::OpaqueToken, now_ms},
};

fn bad_request(msg: &str) -> Response {
    ApiError::bad_request(msg).into_response()
}

fn flag(query: Option<&str>, name: &str) -> Option<bool> {
    respond::query_param(query, name).map(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on"
        )
    })
}

/// `POST /__mock/opaque` `{"sub", "scope"?, "ttl_s"?, "username"?, "client_id"?, "omit_sub"?,
/// "extra"?}` (`extra`: more members of its introspection answer, e.g. roles) ->
/// `{"token", "exp"}`: puts an opaque token straight into the knox store. `ttl_s`
/// (default: the access TTL) may be 0 or negative for an already expired token.
pub async fn opaque(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let map = match respond::json_object(&body) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let sub = match map.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return bad_request("\"sub\" (a non-empty string or a number) is required."),
    };
    let text = |name: &str| map.get(name).and_then(Value::as_str).map(str::to_owned);
    let ttl_s = match map.get("ttl_s") {
        None | Some(Value::Null) => i64::try_from(state.access_ttl).unwrap_or(i64::MAX),
        Some(v) => match v.as_i64() {
            Some(n) => n,
            None => return bad_request("\"ttl_s\" must be an integer."),
        },
    };
    let now = now_ms();
    let expires_at_ms = u64::try_from(i128::from(now) + i128::from(ttl_s) * 1000)
        .unwrap_or(if ttl_s < 0 { 0 } else { u64::MAX });
    let entry = OpaqueToken {
        sub,
        username: text("username"),
        scope: text("scope").unwrap_or_else(|| crate::tokens::knox::LOGIN_SCOPE.to_owned()),
        client_id: text("client_id")
            .unwrap_or_else(|| crate::tokens::knox::LOGIN_CLIENT_ID.to_owned()),
        issued_at_ms: now,
        expires_at_ms,
        omit_sub: map
            .get("omit_sub")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        extra: map
            .get("extra")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    };
    let exp = entry.exp();
    let token = state.knox.issue(entry, now);
    respond::json(StatusCode::OK, json!({ "token": token, "exp": exp }))
}

/// `POST /__mock/mint` `{"alg", "kid"?, "no_kid"?, "secret"?, "secret_base64"?,
/// "claims": {...}}` -> `{"token"}`. Claims are signed verbatim.
pub async fn mint(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let map = match respond::json_object(&body) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let Some(alg) = map.get("alg").and_then(Value::as_str) else {
        return bad_request("\"alg\" is required.");
    };
    let Ok(alg) = alg.parse::<Algorithm>() else {
        return bad_request(&format!("unsupported alg {alg:?}"));
    };
    let empty = Map::new();
    let claims = match map.get("claims") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(c)) => c,
        Some(_) => return bad_request("\"claims\" must be a JSON object."),
    };
    let secret: Option<Vec<u8>> = match (map.get("secret"), map.get("secret_base64")) {
        (Some(Value::String(s)), _) => Some(s.as_bytes().to_vec()),
        (_, Some(Value::String(b))) => match STANDARD.decode(b) {
            Ok(bytes) => Some(bytes),
            Err(e) => return bad_request(&format!("secret_base64: {e}")),
        },
        _ => None,
    };
    let request = MintRequest {
        alg,
        kid: map.get("kid").and_then(Value::as_str),
        omit_kid: map.get("no_kid").and_then(Value::as_bool).unwrap_or(false),
        secret: secret.as_deref(),
        claims,
    };
    match keys::mint(&state.jwks, state.jwt.secret(), &request) {
        Ok(token) => respond::json(StatusCode::OK, json!({ "token": token })),
        Err(e) => bad_request(&e),
    }
}

/// `POST /__mock/jwks/rotate[?drop_old=true]`: publish rsa-2 (new default RSA key);
/// with `drop_old` withdraw rsa-1.
pub async fn jwks_rotate(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    state
        .jwks
        .rotate(flag(q.as_deref(), "drop_old").unwrap_or(false));
    respond::json(StatusCode::OK, state.jwks.rotation_state())
}

/// `POST /__mock/jwks/reset`: initial key set, failure switch off.
pub async fn jwks_reset(State(state): State<Arc<AppState>>) -> Response {
    state.jwks.reset();
    respond::json(StatusCode::OK, state.jwks.rotation_state())
}

/// `POST /__mock/jwks/fail?on=true|false`: while on, the JWKS endpoint answers 503.
pub async fn jwks_fail(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let Some(on) = flag(q.as_deref(), "on") else {
        return bad_request("query parameter \"on\" (true|false) is required.");
    };
    state.jwks.set_failing(on);
    respond::json(StatusCode::OK, state.jwks.rotation_state())
}

/// `POST /__mock/health?status=NNN`: what `GET /health/` answers from now on.
pub async fn health(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let status = respond::query_param(q.as_deref(), "status")
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s));
    let Some(status) = status else {
        return bad_request("query parameter \"status\" (200-599) is required.");
    };
    state.health.store(status, Ordering::SeqCst);
    respond::json(StatusCode::OK, json!({ "status": status }))
}

/// `GET /__mock/stats`.
pub async fn stats(State(state): State<Arc<AppState>>) -> Response {
    respond::json(StatusCode::OK, state.stats.snapshot())
}

/// `POST /__mock/reset`: zero the counters and forget the last requests.
pub async fn reset(State(state): State<Arc<AppState>>) -> Response {
    state.stats.reset();
    respond::json(StatusCode::OK, state.stats.snapshot())
}

/// `GET /__mock/last?route=GET%20/api/products/search/` -> `{"method", "path",
/// "query", "headers"}` of the last request on that route pattern, or 404.
pub async fn last(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let Some(route) = respond::query_param(q.as_deref(), "route") else {
        return bad_request("query parameter \"route\" (e.g. \"GET /echo\") is required.");
    };
    match state.stats.last(&route) {
        Some(last) => respond::json(StatusCode::OK, json!(last)),
        None => respond::detail(
            StatusCode::NOT_FOUND,
            &format!("No request recorded for {route:?}."),
        ),
    }
}
