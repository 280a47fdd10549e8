//! The admin listener: health, readiness, metrics and the `/admin/*` operations.

use crate::proxy::Shared;
use crate::reload::{ReloadOutcome, Reloader};
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

pub struct Admin {
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, reloader: Arc<Reloader>) -> Self {
        Admin { shared, reloader }
    }

    fn authorised(&self, session: &ServerSession) -> bool {
        let snap = self.shared.snapshot();
        let Some(token) = &snap.config.admin.token else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        presented.is_some_and(|p| subtle::ConstantTimeEq::ct_eq(p, token.expose()).into())
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
            (Method::GET, "/metrics") => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain; version=0.0.4")
                .body(self.shared.metrics.render())
                .unwrap_or_default(),
            (_, p) if p.starts_with("/admin/") && !self.authorised(session) => json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "message": "admin calls need Authorization: Bearer <admin token>"}),
            ),
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
            _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
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
