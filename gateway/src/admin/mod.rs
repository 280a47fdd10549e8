//! The admin listener: health, readiness, metrics and the `/admin/*` operations.

mod explain;

use crate::auth::revoke::{self, Revocation, Revocations};
use crate::reload::{ReloadOutcome, Reloader};
use crate::snapshot::Shared;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;
use sha2::Digest;
use std::sync::Arc;

pub struct Admin {
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, reloader: Arc<Reloader>) -> Self {
        Admin { shared, reloader }
    }

    /// Who may call `/admin/*`: with a token, whoever presents it; without one, anyone on a
    /// loopback listener, nobody on any other (closed by default: an exposed admin port would
    /// let anyone reload the configuration or revoke other users' sessions).
    fn admission(&self, session: &ServerSession) -> AdminAccess {
        let snap = self.shared.snapshot();
        let Some(token) = &snap.config.admin.token else {
            return if snap.config.admin.loopback {
                AdminAccess::Allowed
            } else {
                AdminAccess::NoTokenConfigured
            };
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if presented.is_some_and(|p| subtle::ConstantTimeEq::ct_eq(p, token.expose()).into()) {
            AdminAccess::Allowed
        } else {
            AdminAccess::BadToken
        }
    }

    /// `POST /admin/revoke` with `{"token"}`, `{"jti"}` or `{"subject"}` (and optionally a
    /// `ttl` such as `"7d"`, how long the revocation is kept when the token's own expiry is not
    /// known).
    async fn revoke(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req: RevokeRequest = match read_json(
            session,
            "expected {\"token\": ...}, {\"jti\": ...} or {\"subject\": ...}",
        )
        .await
        {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        let ttl = match req.ttl.as_deref().map(crate::config::units::parse_duration) {
            None => None,
            Some(Ok(d)) if !d.is_zero() => Some(d),
            Some(_) => return bad_request("ttl must be a duration such as 24h"),
        };
        let snap = self.shared.snapshot();
        let (kind, revocation) = match (req.token, req.jti, req.subject) {
            (Some(token), None, None) if !token.is_empty() => {
                let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
                let ttl_ms = ttl
                    .unwrap_or_else(|| token_lifetime(&token, &snap, &hash))
                    .as_millis() as u64;
                // A JWT is revoked by its jti: an ECDSA signature can be re-encoded into another
                // token string that still verifies, and would escape a hash of the string.
                let revocation = match jti_of(&token, &snap, &hash) {
                    Some(id) => Revocation::Jti { id, ttl_ms },
                    None => Revocation::Token {
                        id: hex::encode(hash),
                        ttl_ms,
                    },
                };
                ("token", revocation)
            }
            (None, Some(jti), None) if !jti.is_empty() => (
                "jti",
                Revocation::Jti {
                    id: jti,
                    ttl_ms: ttl.unwrap_or(snap.config.auth.revocation_ttl).as_millis() as u64,
                },
            ),
            (None, None, Some(subject)) if !subject.is_empty() => (
                "subject",
                Revocations::subject_now(&subject, ttl.unwrap_or(snap.config.auth.revocation_ttl)),
            ),
            _ => return bad_request("give exactly one of token, jti, subject"),
        };
        let reach = snap
            .auth
            .revocations
            .revoke(revocation, snap.shared())
            .await;
        tracing::info!(kind, reach = ?reach, "revocation recorded");
        // 202 while Redis has not confirmed: applied here, retried until every replica has it.
        let (status, replicas) = match reach {
            revoke::Reach::All => (StatusCode::OK, "all"),
            revoke::Reach::Pending => (StatusCode::ACCEPTED, "pending"),
            revoke::Reach::ThisReplica => (StatusCode::OK, "this replica only"),
        };
        json_response(status, json!({"revoked": kind, "replicas": replicas}))
    }

    /// The public keys of `upstream_assertion`, for upstreams to verify assertions with.
    fn jwks(&self) -> Response<Vec<u8>> {
        match self
            .shared
            .reuse
            .published_keys
            .document(std::time::Instant::now())
        {
            Some(body) => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                // Verifiers refetch on an unknown kid; a short max-age bounds the rest.
                .header("cache-control", "max-age=60")
                .body(body)
                .unwrap_or_default(),
            None => json_response(
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": "upstream_assertion is not configured"}),
            ),
        }
    }

    /// `POST /admin/explain` `{"method", "path", "host", "headers", "client_ip"}`.
    async fn explain(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req: explain::ExplainRequest = match read_json(
            session,
            "expected {\"method\", \"path\", \"host\", \"headers\": {name: value}}",
        )
        .await
        {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        match explain::explain(&self.shared.snapshot(), req).await {
            Ok(v) => json_response(StatusCode::OK, v),
            Err(why) => bad_request(why),
        }
    }

    fn readyz(&self) -> Response<Vec<u8>> {
        let snap = self.shared.snapshot();
        let not_ready = snap.not_ready();
        if not_ready.is_ready() {
            json_response(
                StatusCode::OK,
                json!({"status": "ready", "generation": snap.generation}),
            )
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "status": "not_ready",
                    "upstreams_without_healthy_endpoint": not_ready.upstreams,
                    "jwks_providers_without_keys": not_ready.jwks_providers,
                }),
            )
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
            (Method::GET, "/readyz") => self.readyz(),
            (Method::GET, "/.well-known/jwks.json") => self.jwks(),
            (Method::GET, "/metrics") => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain; version=0.0.4")
                .body(self.shared.metrics.render())
                .unwrap_or_default(),
            (_, p) if p.starts_with("/admin/") => match self.admission(session) {
                AdminAccess::Allowed => self.operation(session, p).await,
                AdminAccess::BadToken => json_response(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "unauthorized", "message": "admin calls need Authorization: Bearer <admin token>"}),
                ),
                AdminAccess::NoTokenConfigured => json_response(
                    StatusCode::FORBIDDEN,
                    json!({"error": "forbidden", "message": "the admin listener is not loopback: set admin.token_env to use /admin/*"}),
                ),
            },
            _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
        }
    }
}

enum AdminAccess {
    Allowed,
    BadToken,
    NoTokenConfigured,
}

impl Admin {
    async fn operation(&self, session: &mut ServerSession, path: &str) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        match (method, path) {
            (Method::POST, "/admin/reload") => {
                let reloader = self.reloader.clone();
                // Building a configuration can block (file reads, DNS); keep it off this runtime.
                let outcome = tokio::task::spawn_blocking(move || reloader.reload()).await;
                match outcome {
                    Ok(ReloadOutcome::Applied { generation }) => json_response(
                        StatusCode::OK,
                        json!({"result": "applied", "generation": generation}),
                    ),
                    Ok(ReloadOutcome::Rejected { reason }) => json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"result": "rejected", "error": reason}),
                    ),
                    Err(_) => json_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"result": "failed"}),
                    ),
                }
            }
            (Method::POST, "/admin/revoke") => self.revoke(session).await,
            (Method::POST, "/admin/explain") => self.explain(session).await,
            _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    token: Option<String>,
    jti: Option<String>,
    subject: Option<String>,
    ttl: Option<String>,
}

/// A JWT's payload, read without verifying it: an admin names the token, and what is read only
/// narrows or sizes what is refused.
fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    crate::auth::jwt::unverified_payload(token)
}

/// The `jti` of a token: from its cached identity, else from a JWT's payload.
fn jti_of(token: &str, snap: &crate::snapshot::Snapshot, hash: &[u8; 32]) -> Option<String> {
    use crate::auth::cache::Entry;
    if let Some(Entry::Valid(p)) = snap.auth.cache.get_local(hash) {
        return p.jti.clone();
    }
    let claims = unverified_claims(token)?;
    let jti = claims.get("jti")?.as_str()?;
    (!jti.is_empty() && jti.len() <= 256 && jti.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| jti.to_string())
}

/// How long a revoked token could still be presented: its cached expiry, else a JWT's `exp`
/// plus the largest leeway, else
/// `auth.revocation_ttl`.
fn token_lifetime(
    token: &str,
    snap: &crate::snapshot::Snapshot,
    hash: &[u8; 32],
) -> std::time::Duration {
    use crate::auth::cache::Entry;
    let unknown = snap.config.auth.revocation_ttl;
    if let Some(Entry::Valid(p)) = snap.auth.cache.get_local(hash) {
        return revoke::ttl_for(&p, unknown);
    }
    let exp = unverified_claims(token)
        .and_then(|c| c.get("exp").and_then(serde_json::Value::as_f64))
        .filter(|e| e.is_finite() && *e >= 0.0 && *e <= crate::auth::MAX_TIME_SECS as f64);
    match exp {
        Some(exp) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            std::time::Duration::from_secs((exp as u64).saturating_sub(now))
                + snap.config.auth.max_leeway
                + std::time::Duration::from_secs(1)
        }
        None => unknown,
    }
}

fn bad_request(msg: &str) -> Response<Vec<u8>> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": "bad_request", "message": msg}),
    )
}

/// An admin call's JSON body (at most 64 KiB), or the 400 that says what was expected.
async fn read_json<T: serde::de::DeserializeOwned>(
    session: &mut ServerSession,
    expected: &str,
) -> Result<T, Response<Vec<u8>>> {
    let body = read_body(session, 64 * 1024)
        .await
        .ok_or_else(|| bad_request("the body must be JSON of at most 64 KiB"))?;
    serde_json::from_slice(&body).map_err(|_| bad_request(expected))
}

async fn read_body(session: &mut ServerSession, limit: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(body),
            Err(_) => return None,
        }
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}
