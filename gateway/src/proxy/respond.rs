//! The answers the gateway makes itself, and the headers every answer gets whoever made it
//! (request id, HSTS, the route's own headers, CORS, `RateLimit`). The one writer of a
//! [`Rejection`]; which pingora error becomes which rejection is decided here too.

use super::ctx::RequestCtx;
use super::forward::over_tls;
use super::headers;
use crate::answer::{RateLimitInfo, Rejection};
use http::HeaderValue;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::borrow::Cow;
use std::time::Instant;

/// Writes a gateway-made answer; the connection is kept only when the rejection allows it.
pub async fn send_rejection(
    session: &mut Session,
    ctx: &RequestCtx,
    rejection: &Rejection,
) -> Result<()> {
    let texts = ctx
        .snapshot
        .as_ref()
        .map(|s| Cow::Borrowed(&s.auth_texts))
        .unwrap_or_default();
    let mut rendered = rejection.render(ctx.request_id.as_str(), &texts);
    if !rendered.keepalive {
        session.set_keepalive(None);
    }
    decorate(session, ctx, &mut rendered.header);
    session
        .write_response_header(Box::new(rendered.header), false)
        .await?;
    session
        .write_response_body(Some(rendered.body), true)
        .await?;
    Ok(())
}

/// pingora's errors that the gateway answers itself; others (a client that went away) get none.
pub fn rejection_for(e: &Error, ctx: &RequestCtx) -> Option<Rejection> {
    use ErrorType::*;
    let timed_out = matches!(
        e.etype(),
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
    );
    match (e.etype(), e.esource()) {
        (HTTPStatus(413), _) => Some(Rejection::PayloadTooLarge {
            limit: ctx
                .snapshot
                .as_ref()
                .map_or(0, |s| s.config.server.max_request_body),
        }),
        (_, ErrorSource::Upstream) if timed_out => match ctx.deadline() {
            Some(d) if d.passed(Instant::now()) => {
                if let Some(route) = ctx.route() {
                    route.timeouts.inc();
                }
                Some(Rejection::UpstreamTimeout {
                    deadline_ms: d.budget_ms(),
                })
            }
            // The upstream's own read timeout, with time left on the route's deadline.
            _ if matches!(e.etype(), ReadTimedout | WriteTimedout) => {
                Some(Rejection::UpstreamTimeout {
                    deadline_ms: ctx
                        .route()
                        .map_or(0, |r| r.upstream.spec.read_timeout.as_millis() as u64),
                })
            }
            _ => Some(Rejection::UpstreamUnavailable),
        },
        (HTTPStatus(code), _) if *code >= 500 => Some(Rejection::UpstreamUnavailable),
        (_, ErrorSource::Upstream) => Some(Rejection::UpstreamUnavailable),
        (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => None,
        (_, ErrorSource::Downstream) => {
            Some(Rejection::BadRequest("the request could not be read"))
        }
        _ => Some(Rejection::Internal),
    }
}

/// Headers every answer gets, whoever made it: HSTS on TLS connections and the route's own
/// `response_headers`.
pub fn decorate(session: &Session, ctx: &RequestCtx, resp: &mut ResponseHeader) {
    headers::edit_response(resp, |h| decorate_headers(session, ctx, h));
}

/// HSTS on TLS answers and the route's own response headers.
pub fn decorate_headers(session: &Session, ctx: &RequestCtx, h: &mut http::HeaderMap) {
    if over_tls(session) {
        let tls = ctx
            .snapshot
            .as_deref()
            .and_then(|s| s.config.server.tls.as_ref());
        if let Some(v) = tls.and_then(|t| t.hsts.clone()) {
            h.insert(http::header::STRICT_TRANSPORT_SECURITY, v);
        }
    }
    if let Some(route) = ctx.route() {
        for (k, v) in &route.spec.response_headers {
            h.insert(k.clone(), v.clone());
        }
        // CORS on every answer to an allowed origin, the gateway's own refusals included.
        if let Some(cors) = &route.spec.cors {
            let origin = session.req_header().headers.get(crate::cors::ORIGIN);
            cors.decorate(origin.filter(|o| cors.allows(o)), h);
        }
        // Draft-11 fields on every answer of a limited route, the gateway's own included;
        // on a cache hit, this request's state.
        if let Some(policy) = &route.ratelimit_policy {
            h.insert(headers::RATELIMIT_POLICY, policy.clone());
            let state = crate::ratelimit::state_header(&route.spec.rate_limits, ctx.limit_states());
            if let Some(state) = state {
                h.insert(headers::RATELIMIT, state);
            }
        }
    }
}

/// `RateLimit-*` on answers of limited routes.
pub fn rate_limit_headers(h: &mut http::HeaderMap, info: &RateLimitInfo) {
    h.insert(headers::RATELIMIT_LIMIT, info.limit_header.clone());
    h.insert(
        headers::RATELIMIT_REMAINING,
        HeaderValue::from(info.remaining),
    );
    h.insert(headers::RATELIMIT_RESET, HeaderValue::from(info.reset_s));
}

/// Writes `rejection` if nothing was written yet; the status the access log records (0: no
/// answer could be given).
pub async fn answer(session: &mut Session, ctx: &RequestCtx, rejection: Option<&Rejection>) -> u16 {
    match rejection {
        Some(r) if session.response_written().is_none() => {
            match send_rejection(session, ctx, r).await {
                Ok(()) => r.status(),
                Err(_) => 0,
            }
        }
        Some(r) => r.status(),
        None => 0,
    }
}

/// pingora's own line is suppressed (it carries the query string), so the cause of an upstream
/// failure (refused, reset, a TLS problem: expired, unknown issuer, wrong name) is said here,
/// once; answers the gateway chose (no endpoint, the deadline) are not failures of this kind.
pub fn log_upstream_failure(e: &Error, ctx: &RequestCtx) {
    if e.esource() != &ErrorSource::Upstream || ctx.rejection.is_some() {
        return;
    }
    let route = ctx.route().map_or("-", |r| r.spec.name.as_str());
    let upstream = ctx.route().map_or("-", |r| r.upstream.spec.name.as_str());
    tracing::warn!(route, upstream, endpoint = ?ctx.upstream_addr, request_id = ctx.request_id.as_str(), error = %e, "upstream request failed");
}
