//! The pingora `ProxyHttp` implementation. Each phase is a few calls to named steps, so the
//! file reads as a request's journey: route -> authenticate -> limit -> forward -> log.

use super::caching;
use super::ctx::{RequestCtx, Stage};
use super::head_timeout;
use super::headers;
use super::{forward, respond};
use crate::answer::Rejection;
use crate::pipeline::{self, Inbound};
use crate::snapshot::{Shared, Snapshot};
use crate::upstream::ErrorKind;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
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
    /// Boxed: pingora keeps the context by value in its per-request future, and a 544-byte
    /// context there made that future about 9 KB larger, copied whole on every request
    /// (bench/ANALYSIS.md, 2026-12-03). One allocation is far cheaper.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Self::CTX {
        // pingora makes the context right after a request head has been read.
        head_timeout::head_received();
        Box::new(RequestCtx::new(self.shared.in_flight.clone()))
    }

    /// No downstream modules: pingora's default adds a (disabled) compression module whose
    /// per-request context and filter calls cost CPU on every request for nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        // An HTTP/2 stream keeps its connection from the idle timeout while it is served.
        ctx.h2_stream = head_timeout::h2_stream_started(session);
        // HTTP/1.1 pipelining (RFC 9112 9.3.2): requests queued behind this one are served in
        // order, each judged on its own, instead of being dropped with the connection.
        session.as_downstream_mut().set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
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
                respond::send_rejection(session, ctx, &rejection)
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
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Content-Length was checked at admission; this catches chunked bodies as they stream.
        if let (Some(chunk), Some(snap)) = (body.as_ref(), ctx.snapshot.as_ref()) {
            ctx.request_body_bytes += chunk.len() as u64;
            let limit = snap.config.server.max_request_body;
            if ctx.request_body_bytes > limit {
                let too_large = Rejection::PayloadTooLarge { limit };
                return refuse(ctx, too_large, "request body over max_request_body");
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // Fail closed: without admission nothing is forwarded, whatever a bug upstream did.
        if ctx.admitted().is_none() {
            return fail_closed(ctx);
        }
        let head_only = session.as_downstream_mut().is_body_empty() && !session.is_upgrade_req();
        match forward::peer(ctx, head_only, Instant::now()) {
            Ok(peer) => Ok(Box::new(peer)),
            Err(rejection) => refuse(ctx, rejection, "not forwarded"),
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Self::CTX,
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
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = ErrorKind::of(&e);
        let Some(route) = ctx.route() else { return e };
        route.upstream.report_failure(ctx.upstream_addr, kind);
        // The cause (refused, timed out, a TLS problem: expired, unknown issuer, wrong name)
        // is said here: pingora's own line is suppressed, since it carries the query string.
        tracing::warn!(route = %route.spec.name, upstream = %route.upstream.spec.name, endpoint = ?ctx.upstream_addr, request_id = ctx.request_id.as_str(), error = %e, "upstream connection failed");
        let retry = forward::retry_after_connect_failure(session.req_header(), ctx, route);
        ctx.retried |= retry;
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
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
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        forward::prepare_upstream_request(session, req, ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
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
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        caching::on_upstream_body(ctx, body, end_of_stream);
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        headers::edit_response(resp, |h| {
            h.insert(headers::X_REQUEST_ID, ctx.request_id.value());
            if let Some(info) = ctx.rate_limit() {
                respond::rate_limit_headers(h, info);
            }
            if let Some(c) = &ctx.cache {
                h.insert(
                    headers::X_CACHE,
                    HeaderValue::from_static(c.result.header()),
                );
            }
            respond::decorate_headers(session, ctx, h);
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
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        // An upstream that failed on a route with `stale_if_error`: the last good answer.
        if let Some(status) = caching::rescue(session, ctx, e).await {
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        respond::log_upstream_failure(e, ctx);
        let rejection = ctx
            .rejection
            .take()
            .or_else(|| respond::rejection_for(e, ctx));
        let code = respond::answer(session, ctx, rejection.as_ref()).await;
        let can_reuse = rejection.as_ref().is_some_and(Rejection::keepalive);
        ctx.rejection = rejection;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: can_reuse,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        // Answers the gateway chose to give (413, 502 with no endpoint) are not errors of ours;
        // an internal failure (a request that reached forwarding unadmitted) always is.
        ctx.rejection
            .as_ref()
            .is_some_and(|r| !matches!(r, Rejection::Internal))
    }

    /// What pingora's own error and retry logs say of a request: method, path and host, never
    /// the query string (a route's `query_param` token travels there) nor other headers.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        let req = session.req_header();
        format!(
            "{} {}, Host: {}",
            req.method,
            req.uri.path(),
            forward::host_of(req).unwrap_or("-")
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
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

/// A request that reached forwarding without being admitted: a bug, refused and said loudly
/// (`suppress_error_log` never hides `Internal`).
fn fail_closed<T>(ctx: &mut RequestCtx) -> Result<T> {
    tracing::error!(
        request_id = ctx.request_id.as_str(),
        "request reached forwarding unadmitted; refused"
    );
    ctx.rejection = Some(Rejection::Internal);
    Error::e_explain(
        ErrorType::InternalError,
        "request reached forwarding unadmitted",
    )
}

/// Ends the request with a gateway answer, which `fail_to_proxy` writes.
fn refuse<T>(ctx: &mut RequestCtx, rejection: Rejection, why: &'static str) -> Result<T> {
    let status = rejection.status();
    ctx.rejection = Some(rejection);
    Error::e_explain(ErrorType::HTTPStatus(status), why)
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
        host: forward::host_of(req),
        scheme: forward::client_scheme(session, ctx),
        headers: &req.headers,
        client_ip: ctx
            .client_ip
            .map(|ip| crate::ratelimit::limit_address(ip, ipv6_prefix)),
        arrived: ctx.started,
    }
}
