//! What reaches the upstream: the request as the upstream receives it (the routed path, no
//! token parameter or cookie, identity headers only from the gateway, `X-Forwarded-*`, the
//! deadline left, the signed assertion), and how the client reached us (scheme, host).

use super::ctx::RequestCtx;
use super::headers;
use crate::answer::Rejection;
use http::HeaderValue;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::borrow::Cow;
use std::time::Instant;

/// Builds the copy of the request the upstream receives.
pub fn prepare_upstream_request(
    session: &Session,
    req: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    let downstream = session.req_header();
    let trusted_peer = trusted_peer(ctx);
    let proto = if over_tls(session) { "https" } else { "http" };
    headers::edit_request(req, |parts| {
        // The upstream must see the exact path that was routed, and no token parameter.
        let path = ctx.admitted().and_then(|a| a.rewritten_path());
        let query = upstream_query(ctx, parts.uri.query());
        if path.is_some() || matches!(query, Some(None | Some(Cow::Owned(_)))) {
            let path = path.unwrap_or(parts.uri.path());
            let query = match query {
                Some(q) => q,
                None => parts.uri.query().map(Cow::Borrowed),
            };
            let pq = match query {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            parts.uri = pq.parse().map_err(|e| {
                Error::because(ErrorType::InternalError, "rewriting the request target", e)
            })?;
        }
        // Room for the headers added in one growth, not one per insert (measured: about 700
        // instructions fewer per request than growing as they come). An HTTP/1 head already
        // has it (PATCHES.md, patch 9) and this costs a comparison; an HTTP/2 one does not.
        parts.headers.reserve(8);
        header_plan(
            &mut parts.headers,
            downstream,
            ctx,
            proto,
            trusted_peer,
            true,
        )
    })
}

/// The query the upstream receives when the route reads a token from one of its parameters
/// (that parameter removed; `Some(None)`: nothing left); `None` when the route has none.
pub fn upstream_query<'q>(
    ctx: &RequestCtx,
    query: Option<&'q str>,
) -> Option<Option<Cow<'q, str>>> {
    let name = ctx.route()?.spec.token_query.as_deref()?;
    Some(query.and_then(|q| crate::auth::sources::strip_query(q, name)))
}

/// The headers as the upstream receives them (the client's, edited by [`header_plan`]): what
/// an upstream's `Vary` on a gateway-set header (`X-Auth-Subject`, `X-Forwarded-*`) must be
/// keyed on, never the client's own header of that name.
pub fn upstream_view(session: &Session, ctx: &RequestCtx) -> http::HeaderMap {
    let downstream = session.req_header();
    let mut h = downstream.headers.clone();
    let proto = if over_tls(session) { "https" } else { "http" };
    // The plan fails only for values a header cannot carry, which admission refused already.
    // With the assertion (a reused one, not a new signature), so a `Vary` naming it keys on
    // what the upstream received.
    let _ = header_plan(&mut h, downstream, ctx, proto, trusted_peer(ctx), true);
    h
}

pub fn trusted_peer(ctx: &RequestCtx) -> bool {
    match (ctx.peer_ip, ctx.snapshot.as_ref()) {
        (Some(ip), Some(s)) => s.config.server.trusted_proxies.contains(&ip),
        _ => false,
    }
}

/// What the gateway removes from and adds to the client's headers on the way upstream.
fn header_plan(
    h: &mut http::HeaderMap,
    downstream: &RequestHeader,
    ctx: &RequestCtx,
    proto: &'static str,
    trusted_peer: bool,
    sign: bool,
) -> Result<()> {
    // Identity headers come only from the gateway: drop any the client sent, in any spelling
    // an upstream framework might read as one of ours.
    headers::remove_gateway_owned(h);
    let signer = ctx.snapshot.as_ref().and_then(|s| s.assertion.as_ref());
    if let Some(signer) = signer {
        headers::remove_any_spelling(h, signer.header());
    }
    if !trusted_peer {
        headers::remove_untrusted_rewrites(h);
    }

    h.insert(headers::X_REQUEST_ID, ctx.request_id.value());
    match ctx.deadline() {
        Some(d) => {
            // What the upstream has left, so it can give up on work nobody will wait for.
            let left = d.remaining(Instant::now()).as_millis().max(1);
            h.insert(
                headers::X_REQUEST_TIMEOUT_MS,
                HeaderValue::from(left as u64),
            );
        }
        // Only the gateway says how long is left; a client's value it did not accept goes.
        None => {
            h.remove(headers::X_REQUEST_TIMEOUT_MS);
        }
    }
    if let Some(peer) = ctx.peer_ip {
        h.insert(
            headers::X_FORWARDED_FOR,
            headers::forwarded_for(&downstream.headers, peer),
        );
    }
    if !(trusted_peer && downstream.headers.contains_key(headers::X_FORWARDED_PROTO)) {
        h.insert(headers::X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(trusted_peer && downstream.headers.contains_key(headers::X_FORWARDED_HOST)) {
        match forwarded_host(downstream) {
            Some(host) => {
                h.insert(headers::X_FORWARDED_HOST, host);
            }
            None => {
                h.remove(headers::X_FORWARDED_HOST);
            }
        }
    }

    if let (Some(admitted), Some(route)) = (ctx.admitted(), ctx.route()) {
        if let Some(p) = admitted.identity().principal() {
            let value = |s: &str| {
                HeaderValue::from_str(s).map_err(|e| {
                    Error::because(ErrorType::InternalError, "identity header value", e)
                })
            };
            h.insert(headers::X_AUTH_SUBJECT, value(&p.subject)?);
            let scopes = p.scopes.header_value().cloned().ok_or_else(|| {
                Error::explain(ErrorType::InternalError, "identity header value: scopes")
            })?;
            h.insert(headers::X_AUTH_SCOPES, scopes);
            h.insert(headers::X_AUTH_PROVIDER, value(&p.provider)?);
            if let (Some(signer), true) = (signer, sign) {
                let audience = crate::assertion::Audience {
                    index: route.upstream.spec.index,
                    name: &route.upstream.spec.name,
                };
                let assertion = signer
                    .assertion(p, audience, std::time::SystemTime::now())
                    .map_err(|e| Error::explain(ErrorType::InternalError, e))?;
                h.insert(signer.header().clone(), assertion);
            }
        }
        if !route.spec.forward_authorization {
            h.remove(http::header::AUTHORIZATION);
        }
        // A route's token cookie never travels on (see `upstream_query` for the parameter).
        if let Some(c) = &route.spec.token_cookie {
            crate::auth::sources::strip_cookie(h, c);
        }
    }
    Ok(())
}

/// `X-Forwarded-Host`: the Host header's own value (a reference count, not a copy), or the
/// authority of an absolute-form target.
fn forwarded_host(req: &RequestHeader) -> Option<HeaderValue> {
    match req.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req
            .headers
            .get(http::header::HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned(),
    }
}

pub fn host_of(req: &RequestHeader) -> Option<&str> {
    req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

pub fn over_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// The scheme the client used: a trusted proxy's `X-Forwarded-Proto` (http or https), else
/// this listener's.
pub fn client_scheme(session: &Session, ctx: &RequestCtx) -> &'static str {
    if trusted_peer(ctx) {
        let said = session.req_header().headers.get(headers::X_FORWARDED_PROTO);
        match said.map(|v| v.as_bytes()) {
            Some(v) if v.eq_ignore_ascii_case(b"https") => return "https",
            Some(v) if v.eq_ignore_ascii_case(b"http") => return "http",
            _ => {}
        }
    }
    if over_tls(session) {
        "https"
    } else {
        "http"
    }
}

/// The endpoint an admitted request goes to, with every wait before the response header
/// clamped to what its deadline leaves; or why it goes nowhere (deadline spent, no healthy
/// endpoint). `head_only`: only a request head goes up.
pub fn peer(
    ctx: &mut RequestCtx,
    head_only: bool,
    now: Instant,
) -> std::result::Result<pingora_core::upstreams::peer::HttpPeer, Rejection> {
    let (Some(route), deadline) = (ctx.route(), ctx.deadline()) else {
        return Err(Rejection::Internal);
    };
    let left = match deadline {
        Some(d) if d.passed(now) => {
            route.timeouts.inc();
            return Err(Rejection::UpstreamTimeout {
                deadline_ms: d.budget_ms(),
            });
        }
        Some(d) => Some(d.remaining(now)),
        None => None,
    };
    let pool = &route.upstream;
    let avoid = if ctx.retried { ctx.upstream_addr } else { None };
    let Some(mut peer) = pool.select(avoid).map(|addr| pool.peer(addr)) else {
        pool.report_no_endpoint();
        return Err(Rejection::UpstreamUnavailable);
    };
    if let Some(left) = left {
        let o = &mut peer.options;
        for t in [
            &mut o.connection_timeout,
            &mut o.total_connection_timeout,
            &mut o.read_timeout,
            &mut o.write_timeout,
        ] {
            *t = Some(t.map_or(left, |v| v.min(left)));
        }
    }
    if head_only {
        // Into an idle pooled connection or a fresh one, a head alone cannot stall, and a
        // timer per request costs more than it guards.
        peer.options.write_timeout = None;
    }
    ctx.upstream_addr = peer._address.as_inet().copied();
    ctx.upstream_started = Some(now);
    Ok(peer)
}

/// After a failed connection nothing reached the upstream, so one retry on another endpoint
/// is safe for requests that are idempotent anyway, when the deadline leaves time for it.
pub fn retry_after_connect_failure(
    req: &RequestHeader,
    ctx: &RequestCtx,
    route: &crate::snapshot::RoutePipeline,
) -> bool {
    let idempotent = matches!(
        req.method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let time_left = ctx
        .deadline()
        .is_none_or(|d| d.remaining(Instant::now()) > std::time::Duration::from_millis(10));
    idempotent && !ctx.retried && time_left && route.upstream.spec.endpoints.len() > 1
}
