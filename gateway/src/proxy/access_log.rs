//! What each finished request leaves behind: its metrics and one access-log line.

use super::ctx::RequestCtx;
use crate::answer::rfc3339_millis;
use pingora_proxy::Session;
use serde_json::{json, Value};
use std::io::Write;
use std::time::SystemTime;

pub fn record(session: &Session, ctx: &RequestCtx) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let elapsed = ctx.started.elapsed();
    let method = &session.req_header().method;
    if let Some(snap) = &ctx.snapshot {
        let metrics = ctx.route().map_or(&snap.unmatched, |r| &r.metrics);
        metrics.observe(method, status, elapsed.as_secs_f64());
    }
    // The level check is one atomic load; nothing is formatted when the log is off.
    if tracing::enabled!(target: "access", tracing::Level::INFO) {
        write_access_line(&access_line(
            session,
            ctx,
            status,
            elapsed.as_secs_f64() * 1000.0,
        ));
    }
}

/// The access-log line: every field present (null when it does not apply), never a token,
/// a secret or a query string.
fn access_line(session: &Session, ctx: &RequestCtx, status: u16, duration_ms: f64) -> Value {
    let route = ctx.route();
    let principal = ctx.principal();
    let trace = ctx.auth_trace();
    let auth = match (trace.and_then(|t| t.outcome), ctx.admitted()) {
        (Some(o), _) => Some(o.as_str()),
        (None, Some(_)) => Some("anonymous"),
        (None, None) => None,
    };
    let rate_limit = match (ctx.limited_by(), ctx.rate_limit()) {
        (Some(_), _) => Some("limited"),
        (None, Some(_)) => Some("allowed"),
        (None, None) => None,
    };
    let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
    json!({
        "ts": rfc3339_millis(SystemTime::now()),
        "level": "INFO",
        "kind": "access",
        "request_id": ctx.request_id.as_str(),
        "route": route.map_or("unmatched", |r| r.spec.name.as_str()),
        "method": session.req_header().method.as_str(),
        "path": session.req_header().uri.path(),
        "status": status,
        "duration_ms": round(duration_ms),
        "upstream": route.filter(|_| ctx.upstream_started.is_some()).map(|r| r.upstream.spec.name.as_str()),
        "upstream_ms": ctx.upstream_elapsed.map(|d| round(d.as_secs_f64() * 1000.0)),
        "subject": principal.map(|p| p.subject.as_str()),
        "auth": auth,
        "reason": trace.and_then(|t| t.denial).map(|d| d.as_str()),
        "shadow": route.map(|r| r.shadow.is_some()),
        "token_cache": trace.and_then(|t| t.tier).map(|t| t.as_str()),
        "rate_limit": rate_limit,
        "policy": ctx.limited_by(),
    })
}

fn write_access_line(line: &Value) {
    let mut buf = line.to_string().into_bytes();
    buf.push(b'\n');
    // One write per line, so lines from different threads never interleave.
    let _ = std::io::stderr().lock().write_all(&buf);
}
