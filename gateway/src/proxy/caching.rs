//! The response cache's part in a request: look up after admission, serve hits, fill on
//! misses, and fall back to a stale answer when the upstream fails.

use super::ctx::RequestCtx;
use super::headers;
use crate::respcache::policy::{self, CacheKey, Storability};
use crate::respcache::{self, CacheResult, CachedResponse, Claim, FillGuard, Freshness};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use pingora_core::{ErrorType, OrErr, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a request waits for another one filling the same key (capped by its deadline).
/// Short, as nginx's `proxy_cache_lock_timeout`: the filler's answer is paced by its own
/// client, and a client reading slowly on purpose must not hold everyone else back.
const MAX_COALESCE_WAIT: Duration = Duration::from_secs(2);

/// The cache's state for one request on a cached route.
pub struct CacheCtx {
    pub primary: CacheKey,
    /// The request's headers as the upstream receives them, for the upstream's `Vary`.
    upstream_view: http::HeaderMap,
    pub result: CacheResult,
    /// Set when this request is the one fetching the key.
    pub fill: Option<Fill>,
    /// An expired answer to fall back on if the upstream fails.
    pub stale: Option<Arc<CachedResponse>>,
}

pub struct Fill {
    _guard: FillGuard,
    pending: Option<Pending>,
}

struct Pending {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    vary: Vec<HeaderName>,
    ttl: Duration,
    body: Vec<u8>,
}

/// Finds an answer for an admitted GET/HEAD on a cached route; `Some` means serve it.
pub async fn lookup(
    session: &Session,
    ctx: &mut RequestCtx,
) -> Option<(Arc<CachedResponse>, CacheResult)> {
    let snapshot = ctx.snapshot.clone()?;
    let route = ctx.route()?;
    let spec = route.spec.cache.as_ref()?;
    let req = session.req_header();
    if req.method != Method::GET && req.method != Method::HEAD {
        return None;
    }
    let path = ctx
        .admitted()
        .and_then(|a| a.rewritten_path())
        .unwrap_or(req.uri.path());
    let principal = ctx.principal();
    let vary = policy::vary_values(&spec.vary, principal, &req.headers);
    let host = policy::cache_host(
        super::forward::host_of(req),
        super::forward::over_tls(session),
    );
    // A token parameter is not part of what the answer is for (nor kept in a key).
    let query = match super::forward::upstream_query(ctx, req.uri.query()) {
        Some(q) => q,
        None => req.uri.query().map(std::borrow::Cow::Borrowed),
    };
    let primary = policy::primary_key(
        &policy::KeyParts {
            route: &route.spec.name,
            upstream: &route.upstream.spec.name,
            host: &host,
            authenticated: principal.is_some(),
            path,
            query: query.as_deref(),
        },
        &vary,
    );
    let upstream_view = super::forward::upstream_view(session, ctx);
    let mut state = Box::new(CacheCtx {
        primary,
        upstream_view,
        result: CacheResult::Miss,
        fill: None,
        stale: None,
    });
    if client_refuses_cache(&req.headers) {
        state.result = CacheResult::Bypass;
        ctx.cache = Some(state);
        return None;
    }
    let cache = &snapshot.response_cache;
    let head = req.method == Method::HEAD;
    let mut waited = false;
    loop {
        if let Some(entry) = cache.lookup(&primary, &state.upstream_view) {
            match entry.freshness() {
                Freshness::Fresh => return Some((entry, CacheResult::Hit)),
                // One request refreshes; everyone else gets the stale answer meanwhile.
                Freshness::StaleRevalidate => match cache.claim(&primary) {
                    Claim::Fill(g) if !head => {
                        state.fill = Some(Fill {
                            _guard: g,
                            pending: None,
                        });
                        state.stale = Some(entry);
                        ctx.cache = Some(state);
                        return None;
                    }
                    _ => return Some((entry, CacheResult::Stale)),
                },
                Freshness::StaleIfError => state.stale = Some(entry),
                Freshness::Expired => {}
            }
        }
        if head {
            // A HEAD answer has no body to store; it may still use GET entries above.
            ctx.cache = Some(state);
            return None;
        }
        match cache.claim(&primary) {
            Claim::Fill(g) => {
                state.fill = Some(Fill {
                    _guard: g,
                    pending: None,
                });
                ctx.cache = Some(state);
                return None;
            }
            Claim::Pass => {
                ctx.cache = Some(state);
                return None;
            }
            Claim::Wait(rx) if !waited => {
                let limit = ctx.deadline().map_or(MAX_COALESCE_WAIT, |d| {
                    d.remaining(Instant::now()).min(MAX_COALESCE_WAIT)
                });
                respcache::wait(rx, limit).await;
                waited = true;
            }
            Claim::Wait(_) => {
                ctx.cache = Some(state);
                return None;
            }
        }
    }
}

/// `Cache-Control: no-cache`/`no-store` or `Pragma: no-cache` from the client: go upstream.
fn client_refuses_cache(headers: &http::HeaderMap) -> bool {
    let has = |name, needle: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains(needle))
        })
    };
    has(http::header::CACHE_CONTROL, "no-cache")
        || has(http::header::CACHE_CONTROL, "no-store")
        || has(http::header::PRAGMA, "no-cache")
}

/// Writes a cached answer with `X-Cache`, `Age` and this request's own headers.
pub async fn serve(
    session: &mut Session,
    ctx: &RequestCtx,
    entry: &CachedResponse,
    result: CacheResult,
) -> Result<()> {
    let head = session.req_header().method == Method::HEAD;
    // Built as plain `http` parts and converted once: no case map, no per-insert parsing.
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(entry.status)
        .or_err(ErrorType::InternalError, "cached status")?;
    let h = &mut parts.headers;
    h.reserve(entry.headers.len() + 8);
    for (k, v) in &entry.headers {
        h.append(k.clone(), v.clone());
    }
    h.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(entry.body.len()),
    );
    h.insert(headers::X_CACHE, HeaderValue::from_static(result.header()));
    h.insert(http::header::AGE, HeaderValue::from(entry.age().as_secs()));
    h.insert(headers::X_REQUEST_ID, ctx.request_id.value());
    if let Some(info) = ctx.rate_limit() {
        super::respond::rate_limit_headers(h, info);
    }
    super::respond::decorate_headers(session, ctx, h);
    let h = ResponseHeader::from(parts);
    count(ctx, result);
    let no_body = head || entry.body.is_empty();
    session.write_response_header(Box::new(h), no_body).await?;
    if !no_body {
        session
            .write_response_body(Some(entry.body.clone()), true)
            .await?;
    }
    Ok(())
}

pub fn count(ctx: &RequestCtx, result: CacheResult) {
    if let Some(c) = ctx
        .route()
        .and_then(|r| r.cache_results.get(result as usize))
    {
        c.inc();
    }
}

/// The upstream's header arrived: decide whether this fill will be stored. `true` asks the
/// caller to fail the request so the stale answer is served instead of an upstream 5xx.
pub fn on_upstream_header(ctx: &mut RequestCtx, resp: &ResponseHeader) -> bool {
    let status = resp.status.as_u16();
    let ttl = ctx
        .route()
        .and_then(|r| r.spec.cache.as_ref())
        .map(|c| c.ttl);
    let snapshot = ctx.snapshot.clone();
    let Some(c) = ctx.cache.as_mut() else {
        return false;
    };
    if status >= 500 && c.stale.as_ref().is_some_and(|s| s.usable_if_error()) {
        return true;
    }
    let Some(fill) = c.fill.as_mut() else {
        return false;
    };
    match policy::storability(status, &resp.headers, ttl.unwrap_or_default()) {
        Storability::Yes { ttl, vary } => {
            fill.pending = Some(Pending {
                status,
                headers: storable_headers(resp),
                vary,
                ttl,
                body: Vec::new(),
            });
        }
        Storability::No(_) => {
            // Errors may pass; an answer the upstream says not to store will not change soon.
            if status < 500 {
                if let Some(s) = &snapshot {
                    s.response_cache.mark_uncacheable(&c.primary);
                }
            }
            c.fill = None;
        }
    }
    false
}

fn storable_headers(resp: &ResponseHeader) -> Vec<(HeaderName, HeaderValue)> {
    const SKIP: &[&str] = &[
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "content-length",
        "x-request-id",
        "age",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ];
    resp.headers
        .iter()
        .filter(|(k, _)| !SKIP.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A body chunk of a fill: kept while under the entry size limit, stored at the end.
pub fn on_upstream_body(ctx: &mut RequestCtx, body: &Option<Bytes>, end: bool) {
    let Some(snapshot) = ctx.snapshot.clone() else {
        return;
    };
    let spec = ctx.route().and_then(|r| r.spec.cache.clone());
    let Some(c) = ctx.cache.as_mut() else { return };
    let Some(fill) = c.fill.as_mut() else { return };
    let Some(p) = fill.pending.as_mut() else {
        return;
    };
    let cache = &snapshot.response_cache;
    if let Some(b) = body {
        if p.body.len() + b.len() > cache.max_entry_size {
            fill.pending = None;
            return;
        }
        p.body.extend_from_slice(b);
    }
    if end {
        if let (Some(p), Some(spec)) = (fill.pending.take(), spec) {
            let entry = CachedResponse {
                status: p.status,
                headers: p.headers,
                body: Bytes::from(p.body),
                stored_at: Instant::now(),
                fresh_for: p.ttl,
                stale_while_revalidate: spec.stale_while_revalidate.unwrap_or_default(),
                stale_if_error: spec.stale_if_error.unwrap_or_default(),
            };
            cache.store(&c.primary, p.vary, &c.upstream_view, entry);
        }
        // Dropping the guard wakes the requests that waited for this one.
        c.fill = None;
    }
}

/// An upstream failure with a stale answer in hand: the answer to serve instead.
pub fn stale_for_error(ctx: &RequestCtx) -> Option<Arc<CachedResponse>> {
    ctx.cache
        .as_ref()?
        .stale
        .clone()
        .filter(|s| s.usable_if_error())
}

/// When the upstream failed (or could not be reached) and the route keeps answers for
/// `stale_if_error`: the last good one is served, and its status returned.
pub async fn rescue(
    session: &mut Session,
    ctx: &mut RequestCtx,
    e: &pingora_core::Error,
) -> Option<u16> {
    use crate::answer::Rejection;
    let upstream_failed = e.esource() == &pingora_core::ErrorSource::Upstream
        || matches!(e.etype(), ErrorType::HTTPStatus(c) if *c >= 500)
        || matches!(
            ctx.rejection,
            Some(Rejection::UpstreamUnavailable | Rejection::UpstreamTimeout { .. })
        );
    if !upstream_failed || session.response_written().is_some() {
        return None;
    }
    let stale = stale_for_error(ctx)?;
    serve(session, ctx, &stale, CacheResult::Stale).await.ok()?;
    ctx.rejection = None;
    Some(stale.status)
}
