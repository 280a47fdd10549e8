//! What each finished request leaves behind: its metrics and one access-log line.

use crate::proxy::ctx::RequestCtx;
use crate::proxy::respond::rfc3339_millis;
use pingora_proxy::Session;
use std::time::SystemTime;

pub fn record(session: &Session, ctx: &RequestCtx) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let elapsed = ctx.started.elapsed();
    let method = &session.req_header().method;
    if let Some(snap) = &ctx.snapshot {
        let metrics = ctx.route().map_or(&snap.unmatched, |r| &r.metrics);
        metrics.observe(method, status, elapsed.as_secs_f64());
    }
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let route = ctx.route().map_or("unmatched", |r| r.spec.name.as_str());
    let upstream = ctx
        .route()
        .filter(|_| ctx.upstream_started.is_some())
        .map(|r| r.upstream.spec.name.as_str());
    let subject = ctx
        .admitted
        .as_ref()
        .and_then(|a| a.identity.principal())
        .map(|p| p.subject.as_str());
    let auth = match (ctx.auth_outcome, &ctx.admitted) {
        (Some(o), _) => o.as_str(),
        (None, Some(_)) => "anonymous",
        (None, None) => "-",
    };
    tracing::info!(
        target: "access",
        kind = "access",
        ts = %rfc3339_millis(SystemTime::now()),
        request_id = %ctx.request_id,
        route,
        method = %method,
        path = %session.req_header().uri.path(),
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream,
        upstream_ms = ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
        subject,
        auth,
        token_cache = ctx.token_cache.map_or("-", |t| t.as_str()),
        rate_limit = match (&ctx.limited_by, &ctx.rate_limit) {
            (Some(_), _) => "limited",
            (None, Some(_)) => "allowed",
            (None, None) => "-",
        },
    );
}
