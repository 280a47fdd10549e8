//! Application state, the router, and the middleware every response goes through.

use std::sync::{
    atomic::{AtomicU16, Ordering},
    Arc,
};

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::Response,
    routing::{any, get, post},
    Router,
};
use serde_json::json;

use crate::{
    catalog::{self, Catalog},
    cli::{ClientCredentials, ServeArgs},
    control, delay, echo,
    keys::{self, Jwks, KeySet},
    respond, stats,
    stats::Stats,
    tokens::{self, knox::KnoxStore, simplejwt::SimpleJwt},
    users::{self, Users},
};

pub struct AppState {
    pub name: String,
    pub name_header: HeaderValue,
    pub users: Users,
    pub jwt: SimpleJwt,
    pub access_ttl: u64,
    pub knox: KnoxStore,
    pub introspection_client: ClientCredentials,
    pub jwks: Jwks,
    pub catalog: Catalog,
    pub stats: Stats,
    /// Status `GET /health/` answers with.
    pub health: AtomicU16,
}

impl AppState {
    pub fn new(args: &ServeArgs) -> Result<Self, String> {
        let name_header = HeaderValue::from_str(&args.name)
            .map_err(|_| format!("--name {:?} is not a valid header value", args.name))?;
        let keys = KeySet::load(args.keys_dir.as_deref())?;
        let knox = KnoxStore::default();
        for seed in &args.opaque_token {
            let Some((token, sub)) = seed
                .rsplit_once(':')
                .filter(|(t, s)| !t.is_empty() && !s.is_empty())
            else {
                return Err(format!("--opaque-token {seed:?}: expected TOKEN:SUB"));
            };
            let now = crate::tokens::now_ms();
            let entry = crate::tokens::knox::OpaqueToken {
                sub: sub.to_owned(),
                username: None,
                scope: crate::tokens::knox::LOGIN_SCOPE.to_owned(),
                client_id: crate::tokens::knox::LOGIN_CLIENT_ID.to_owned(),
                issued_at_ms: now,
                expires_at_ms: now + 3_600_000,
                omit_sub: false,
                extra: serde_json::Map::new(),
            };
            knox.issue_as(token.to_owned(), entry, now);
        }
        Ok(Self {
            name: args.name.clone(),
            name_header,
            users: args.users.clone(),
            jwt: SimpleJwt::new(
                args.jwt_secret.as_bytes(),
                args.access_ttl,
                args.refresh_ttl,
            ),
            access_ttl: args.access_ttl,
            knox,
            introspection_client: args.introspection_client.clone(),
            jwks: Jwks::new(keys),
            catalog: Catalog::generate(catalog::CATALOG_SIZE, catalog::SEED),
            stats: Stats::default(),
            health: AtomicU16::new(200),
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        // The LMS API.
        .route("/api/token/", post(tokens::obtain_pair))
        .route("/api/token/refresh/", post(tokens::refresh))
        .route("/api/auth/login/", post(tokens::knox_login))
        .route("/api/auth/logout/", post(tokens::knox_logout))
        .route("/api/auth/introspect/", post(tokens::introspect))
        .route("/.well-known/jwks.json", get(keys::jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/api/users/{id}/profile/", get(users::profile))
        .route("/api/products/search/", get(catalog::search))
        .route("/health/", get(health))
        // Gateway-behaviour probes.
        .route("/echo", any(echo::echo))
        .route("/echo/", any(echo::echo))
        .route("/echo/{*rest}", any(echo::echo))
        .route("/stream", get(echo::stream))
        .route("/ws", get(echo::ws))
        // Test controls.
        .route("/__mock/opaque", post(control::opaque))
        .route("/__mock/mint", post(control::mint))
        .route("/__mock/jwks/rotate", post(control::jwks_rotate))
        .route("/__mock/jwks/reset", post(control::jwks_reset))
        .route("/__mock/jwks/fail", post(control::jwks_fail))
        .route("/__mock/health", post(control::health))
        .route("/__mock/stats", get(control::stats))
        .route("/__mock/reset", post(control::reset))
        .route("/__mock/last", get(control::last))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Layers run outermost last-added: common headers, then stats (so a request is
        // counted on arrival), then the delay, then the handler. `Router::layer` also
        // wraps the fallbacks, so 404/405 answers get the same treatment.
        .layer(middleware::from_fn(delay::delay))
        .layer(middleware::from_fn_with_state(state.clone(), stats::record))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            common_headers,
        ))
        .with_state(state)
}

/// Adds `X-Mock-Name` to every response, `Cache-Control: <v>` when the request asked for it
/// with `X-Mock-Cache-Control: <v>` (for the gateway's response cache), and each
/// `X-Mock-Response-Header: Name: value` as a response header (for hop-by-hop tests).
async fn common_headers(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let cache_control = req.headers().get("x-mock-cache-control").cloned();
    let extra: Vec<(HeaderName, axum::http::HeaderValue)> = req
        .headers()
        .get_all("x-mock-response-header")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split_once(':'))
        .filter_map(|(n, v)| {
            Some((
                HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                axum::http::HeaderValue::from_str(v.trim()).ok()?,
            ))
        })
        .collect();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let mut response = next.run(req).await;
    tracing::debug!(%method, path, status = response.status().as_u16(), "request");
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-mock-name"),
        state.name_header.clone(),
    );
    if let Some(value) = cache_control {
        headers.insert(axum::http::header::CACHE_CONTROL, value);
    }
    for (name, value) in extra {
        headers.append(name, value);
    }
    response
}

/// `GET /health/`: `{"status":"ok"}` with 200, or whatever `/__mock/health` set.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let code = state.health.load(Ordering::SeqCst);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let word = if status.is_success() {
        "ok"
    } else {
        "unavailable"
    };
    respond::json(status, json!({ "status": word }))
}

/// `GET /.well-known/openid-configuration`: OIDC provider metadata whose `issuer` is
/// `http://<Host>` (how the mock was reached), with `jwks_uri` beside it; it fails with the
/// JWKS failure switch.
async fn discovery(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if state.jwks.is_failing() {
        return respond::detail(
            StatusCode::SERVICE_UNAVAILABLE,
            "discovery temporarily unavailable (mock failure switch is on).",
        );
    }
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let issuer = format!("http://{host}");
    respond::json(
        StatusCode::OK,
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "token_endpoint": format!("{issuer}/api/token/"),
            "introspection_endpoint": format!("{issuer}/api/auth/introspect/"),
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        }),
    )
}

async fn not_found() -> Response {
    respond::not_found()
}

/// DRF's 405 body.
async fn method_not_allowed(method: Method) -> Response {
    respond::detail(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Method \"{method}\" not allowed."),
    )
}
