//! What each finished request leaves behind: its metrics and one access-log line.

use super::ctx::RequestCtx;
use crate::answer::LogTime;
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
    // The level check is one atomic load; nothing is formatted when the log is off.
    if tracing::enabled!(target: "access", tracing::Level::INFO) {
        let ts = LogTime::new(SystemTime::now());
        write_access_line(&access_line(
            session,
            ctx,
            &ts,
            status,
            elapsed.as_secs_f64() * 1000.0,
        ));
    }
}

/// The access-log line: every field present (null when it does not apply), never a token,
/// a secret or a query string. Borrowed fields, serialised straight into the line's buffer:
/// no allocation per field.
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    ts: &'a str,
    level: &'static str,
    kind: &'static str,
    request_id: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    upstream: Option<&'a str>,
    upstream_ms: Option<f64>,
    subject: Option<&'a str>,
    auth: Option<&'static str>,
    reason: Option<&'static str>,
    shadow: Option<bool>,
    token_cache: Option<&'static str>,
    rate_limit: Option<&'static str>,
    policy: Option<&'a str>,
}

fn access_line<'a>(
    session: &'a Session,
    ctx: &'a RequestCtx,
    ts: &'a LogTime,
    status: u16,
    duration_ms: f64,
) -> AccessLine<'a> {
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
    AccessLine {
        ts: ts.as_str(),
        level: "INFO",
        kind: "access",
        request_id: ctx.request_id.as_str(),
        route: route.map_or("unmatched", |r| r.spec.name.as_str()),
        method: session.req_header().method.as_str(),
        path: session.req_header().uri.path(),
        status,
        duration_ms: round(duration_ms),
        upstream: route
            .filter(|_| ctx.upstream_started.is_some())
            .map(|r| r.upstream.spec.name.as_str()),
        upstream_ms: ctx
            .upstream_elapsed
            .map(|d| round(d.as_secs_f64() * 1000.0)),
        subject: principal.map(|p| p.subject.as_str()),
        auth,
        reason: trace.and_then(|t| t.denial).map(|d| d.as_str()),
        shadow: route.map(|r| r.shadow.is_some()),
        token_cache: trace.and_then(|t| t.tier).map(|t| t.as_str()),
        rate_limit,
        policy: ctx.limited_by(),
    }
}

/// One line, handed to the log writer thread (`crate::logging`): a stalled stderr costs a
/// dropped line, never a stalled request.
fn write_access_line(line: &AccessLine<'_>) {
    let mut buf = Vec::with_capacity(512);
    if serde_json::to_writer(&mut buf, line).is_ok() {
        buf.push(b'\n');
        crate::logging::write_line(buf);
    }
}
