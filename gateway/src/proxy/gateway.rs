//! The pingora `ProxyHttp` implementation. Each phase is a few calls to named steps, so the
//! file reads as a request's journey: route -> authenticate -> limit -> forward -> log.

use super::caching;
use super::ctx::{RequestCtx, Stage};
use super::head_timeout;
use super::headers;
use crate::answer::{RateLimitInfo, Rejection};
use crate::pipeline::{self, Inbound};
use crate::respcache::CacheResult;
use crate::snapshot::{Shared, Snapshot};
use crate::upstream::ErrorKind;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    pub fn new(shared: Arc<Shared>) -> Self {
        Gateway { shared }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // pingora makes the context right after a request head has been read.
        head_timeout::head_received();
        RequestCtx::new(self.shared.in_flight.clone())
    }

    /// No downstream modules: pingora's default adds a (disabled) compression module whose
    /// per-request context and filter calls cost CPU on every request for nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // An HTTP/2 stream keeps its connection from the idle timeout while it is served.
        ctx.h2_stream = head_timeout::h2_stream_started(session);
        // HTTP/1.1 pipelining (RFC 9112 9.3.2): requests queued behind this one are served in
        // order, each judged on its own, instead of being dropped with the connection.
        session.as_downstream_mut().set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snapshot = self.shared.snapshot();
        identify(session, ctx, &snapshot);
        let prefix = snapshot.config.server.client_ipv6_prefix;
        let verdict = pipeline::admit(&snapshot, &inbound(session, ctx, prefix)).await;
        ctx.snapshot = Some(snapshot);
        match verdict {
            Ok(admitted) => {
                ctx.stage = Stage::Admitted(admitted);
                // Only now, after auth and limits, may the cache answer.
                if let Some((entry, result)) = caching::lookup(session, ctx).await {
                    caching::serve(session, ctx, &entry, result).await?;
                    return Ok(true);
                }
                Ok(false)
            }
            Err(denied) => {
                // Recorded first: the answer's headers (CORS, RateLimit) read the stage.
                let rejection = denied.rejection.clone();
                ctx.stage = Stage::Denied(denied);
                send_rejection(session, ctx, &rejection)
                    .await
                    .map(|()| true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Content-Length was checked at admission; this catches chunked bodies as they stream.
        if let (Some(chunk), Some(snap)) = (body.as_ref(), ctx.snapshot.as_ref()) {
            ctx.request_body_bytes += chunk.len() as u64;
            let limit = snap.config.server.max_request_body;
            if ctx.request_body_bytes > limit {
                ctx.rejection = Some(Rejection::PayloadTooLarge { limit });
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over max_request_body",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Fail closed: without admission nothing is forwarded, whatever a bug upstream did.
        let (Some(admitted), Some(route)) = (ctx.admitted(), ctx.route()) else {
            tracing::error!(
                request_id = ctx.request_id.as_str(),
                "request reached forwarding unadmitted; refused"
            );
            ctx.rejection = Some(Rejection::Internal);
            return Error::e_explain(
                ErrorType::InternalError,
                "request reached forwarding unadmitted",
            );
        };
        let now = Instant::now();
        let left = match admitted.deadline() {
            Some(d) if d.passed(now) => {
                route.timeouts.inc();
                ctx.rejection = Some(Rejection::UpstreamTimeout {
                    deadline_ms: d.budget_ms(),
                });
                return Error::e_explain(
                    ErrorType::HTTPStatus(504),
                    "deadline passed before forwarding",
                );
            }
            Some(d) => Some(d.remaining(now)),
            None => None,
        };
        let pool = route.upstream.clone();
        let avoid = if ctx.retried { ctx.upstream_addr } else { None };
        let Some(mut peer) = pool.select(avoid).map(|addr| pool.peer(addr)) else {
            pool.report_no_endpoint();
            ctx.rejection = Some(Rejection::UpstreamUnavailable);
            return Error::e_explain(ErrorType::HTTPStatus(502), "no healthy endpoint");
        };
        if let Some(left) = left {
            // Every wait before the response header is clamped to what the deadline leaves.
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
        if session.as_downstream_mut().is_body_empty() && !session.is_upgrade_req() {
            // Only a request head goes up, into an idle pooled connection or a fresh one: the
            // write cannot stall, and a timer per request costs more than it guards.
            peer.options.write_timeout = None;
        }
        ctx.upstream_addr = peer._address.as_inet().copied();
        ctx.upstream_started = Some(now);
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pinned upstream certificates are matched here, before the request is written.
        if let Some(route) = ctx.route() {
            if let Err(why) = route.upstream.check_certificate(digest) {
                return Err(Error::explain(ErrorType::InvalidCert, why).into_up());
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = ErrorKind::of(&e);
        let Some(route) = ctx.route() else { return e };
        route.upstream.report_failure(ctx.upstream_addr, kind);
        // The cause (refused, timed out, a TLS problem: expired, unknown issuer, wrong name)
        // is said here: pingora's own line is suppressed, since it carries the query string.
        tracing::warn!(route = %route.spec.name, upstream = %route.upstream.spec.name, endpoint = ?ctx.upstream_addr, request_id = ctx.request_id.as_str(), error = %e, "upstream connection failed");
        // Nothing reached the upstream, so one retry on another endpoint is safe for requests
        // that are idempotent anyway, when the deadline leaves time for it.
        let idempotent = matches!(
            session.req_header().method,
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        let time_left = ctx
            .deadline()
            .is_none_or(|d| d.remaining(Instant::now()) > Duration::from_millis(10));
        let retry =
            idempotent && !ctx.retried && time_left && route.upstream.spec.endpoints.len() > 1;
        ctx.retried |= retry;
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if let Some(route) = ctx.route() {
            route
                .upstream
                .report_failure(ctx.upstream_addr, ErrorKind::of(&e));
        }
        let mut e = e.more_context(format!("peer: {peer}"));
        let deadline_passed = ctx.deadline().is_some_and(|d| d.passed(Instant::now()));
        // A request that may have reached the upstream is only retried by pingora's own rule
        // (an idempotent request on a reused connection the upstream had already closed), and
        // never once the deadline is spent.
        if deadline_passed
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        prepare_upstream_request(session, req, ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_elapsed = ctx.upstream_started.map(|t| t.elapsed());
        if let (Some(route), Some(elapsed)) = (ctx.route(), ctx.upstream_elapsed) {
            route.upstream_duration.observe(elapsed.as_secs_f64());
            route.upstream.report_success(ctx.upstream_addr);
        }
        let switching = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
        headers::edit_response(resp, |h| headers::remove_connection_nominated(h, switching));
        if caching::on_upstream_header(ctx, resp) {
            return Error::e_explain(
                ErrorType::HTTPStatus(resp.status.as_u16()),
                "upstream error; a stale cached answer is served instead",
            );
        }
        if resp.status.is_success() {
            revoke_after_logout(ctx).await;
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        caching::on_upstream_body(ctx, body, end_of_stream);
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        headers::edit_response(resp, |h| {
            h.insert(headers::X_REQUEST_ID, ctx.request_id.value());
            if let Some(info) = ctx.rate_limit() {
                rate_limit_headers(h, info);
            }
            if let Some(c) = &ctx.cache {
                h.insert(
                    headers::X_CACHE,
                    HeaderValue::from_static(c.result.header()),
                );
            }
            decorate_headers(session, ctx, h);
        });
        if let Some(c) = &ctx.cache {
            caching::count(ctx, c.result);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let upstream_failed = e.esource() == &ErrorSource::Upstream
            || matches!(e.etype(), ErrorType::HTTPStatus(c) if *c >= 500)
            || matches!(
                ctx.rejection,
                Some(Rejection::UpstreamUnavailable | Rejection::UpstreamTimeout { .. })
            );
        if let Some(stale) = caching::stale_for_error(ctx).filter(|_| upstream_failed) {
            if session.response_written().is_none()
                && caching::serve(session, ctx, &stale, CacheResult::Stale)
                    .await
                    .is_ok()
            {
                ctx.rejection = None;
                return FailToProxy {
                    error_code: stale.status,
                    can_reuse_downstream: false,
                };
            }
        }
        if e.esource() == &ErrorSource::Upstream && ctx.rejection.is_none() {
            // pingora's own line is suppressed (it carries the query string), so the cause of
            // an upstream failure (refused, reset, a TLS problem: expired, unknown issuer, wrong
            // name) is said here, once.
            let route = ctx.route().map(|r| r.spec.name.as_str()).unwrap_or("-");
            let upstream = ctx
                .route()
                .map(|r| r.upstream.spec.name.as_str())
                .unwrap_or("-");
            tracing::warn!(route, upstream, endpoint = ?ctx.upstream_addr, request_id = ctx.request_id.as_str(), error = %e, "upstream request failed");
        }
        let rejection = ctx.rejection.take().or_else(|| rejection_for(e, ctx));
        let code = match &rejection {
            Some(r) if session.response_written().is_none() => {
                if send_rejection(session, ctx, r).await.is_err() {
                    0
                } else {
                    r.status()
                }
            }
            Some(r) => r.status(),
            None => 0,
        };
        let can_reuse = rejection.as_ref().is_some_and(|r| r.keepalive());
        ctx.rejection = rejection;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: can_reuse,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        // Answers the gateway chose to give (413, 502 with no endpoint) are not errors of ours;
        // an internal failure (a request that reached forwarding unadmitted) always is.
        ctx.rejection
            .as_ref()
            .is_some_and(|r| !matches!(r, Rejection::Internal))
    }

    /// What pingora's own error and retry logs say of a request: method, path and host, never
    /// the query string (a route's `query_param` token travels there) nor other headers.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {}, Host: {}",
            req.method,
            req.uri.path(),
            host_of(req).unwrap_or("-")
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        super::access_log::record(session, ctx);
        head_timeout::awaiting_next_head();
    }
}

/// On a `revokes_token` route (a logout), the upstream's 2xx revokes the presented token here
/// and, through Redis, on every replica, before the client sees the answer.
async fn revoke_after_logout(ctx: &RequestCtx) {
    let (Some(route), Some(snapshot), Some(hash)) = (
        ctx.route(),
        ctx.snapshot.as_ref(),
        ctx.auth_trace().and_then(|t| t.token_hash),
    ) else {
        return;
    };
    if !route.spec.revokes_token {
        return;
    }
    let principal = ctx.principal();
    // As long as the token could still be accepted: its `exp` plus leeway, or
    // `auth.revocation_ttl` for tokens without one.
    let ttl = principal.map_or(snapshot.config.auth.revocation_ttl, |p| {
        crate::auth::revoke::ttl_for(p, snapshot.config.auth.revocation_ttl)
    });
    let ttl_ms = ttl.as_millis() as u64;
    // A JWT by its jti, which a re-encoded ECDSA signature keeps (see `admin::jti_of`).
    let revocation = match principal.and_then(|p| p.jti.clone()) {
        Some(id) => crate::auth::revoke::Revocation::Jti { id, ttl_ms },
        None => crate::auth::revoke::Revocation::Token {
            id: hex::encode(hash),
            ttl_ms,
        },
    };
    snapshot
        .auth
        .revocations
        .revoke(revocation, snapshot.shared())
        .await;
}

/// Request id and client address, needed by every answer including rejections.
fn identify(session: &Session, ctx: &mut RequestCtx, snapshot: &Snapshot) {
    let req = session.req_header();
    ctx.request_id = headers::RequestId::of(&req.headers);
    // IPv4 peers of a dual-stack listener arrive as `::ffff:a.b.c.d`: they are IPv4 clients.
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical());
    ctx.peer_ip = peer;
    ctx.client_ip =
        peer.map(|p| headers::client_ip(p, &req.headers, &snapshot.config.server.trusted_proxies));
}

/// The plain inputs admission judges, borrowed from the session.
fn inbound<'a>(session: &'a Session, ctx: &RequestCtx, ipv6_prefix: u8) -> Inbound<'a> {
    let req = session.req_header();
    Inbound {
        method: &req.method,
        target_len: req.raw_path().len(),
        path: req.uri.path().as_bytes(),
        query: req.uri.query(),
        host: host_of(req),
        scheme: client_scheme(session, ctx),
        headers: &req.headers,
        client_ip: ctx
            .client_ip
            .map(|ip| crate::ratelimit::limit_address(ip, ipv6_prefix)),
        arrived: ctx.started,
    }
}

/// The scheme the client used: a trusted proxy's `X-Forwarded-Proto` (http or https), else
/// this listener's.
fn client_scheme(session: &Session, ctx: &RequestCtx) -> &'static str {
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

pub fn over_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Writes a gateway-made answer; the connection is kept only when the rejection allows it.
async fn send_rejection(
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
fn rejection_for(e: &Error, ctx: &RequestCtx) -> Option<Rejection> {
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

/// Builds the copy of the request the upstream receives.
fn prepare_upstream_request(
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
        // instructions fewer per request than growing as they come).
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

fn trusted_peer(ctx: &RequestCtx) -> bool {
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
