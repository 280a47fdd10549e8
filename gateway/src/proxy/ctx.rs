//! Per-request state carried between the proxy phases.

use super::respond::{RateLimitInfo, Rejection};
use super::Snapshot;
use crate::auth::cache::{Tier, TokenHash};
use crate::auth::{Identity, Outcome};
use crate::deadline::Deadline;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub struct RequestCtx {
    pub started: Instant,
    /// The configuration version this request is judged by, loaded once.
    pub snapshot: Option<Arc<Snapshot>>,
    /// Index into `snapshot.routes` once a route matched.
    pub route: Option<usize>,
    pub request_id: super::headers::RequestId,
    pub peer_ip: Option<IpAddr>,
    pub client_ip: Option<IpAddr>,
    /// The normalised path, when it differs from what the client sent.
    pub rewritten_path: Option<String>,
    /// Set only by admission; forwarding requires it, so nothing reaches an upstream unjudged.
    pub admitted: Option<Admitted>,
    /// What authentication decided, when the route has auth.
    pub auth_outcome: Option<Outcome>,
    /// Which token-cache tier answered.
    pub token_cache: Option<Tier>,
    /// Hash of the presented credential, for `revokes_token` routes.
    pub token_hash: Option<TokenHash>,
    /// An answer decided in a later phase, rendered by `fail_to_proxy`.
    pub rejection: Option<Rejection>,
    pub request_body_bytes: u64,
    pub upstream_started: Option<Instant>,
    pub upstream_elapsed: Option<std::time::Duration>,
    pub upstream_addr: Option<std::net::SocketAddr>,
    pub deadline: Option<Deadline>,
    /// The tightest limit's state, sent back on successful answers of limited routes.
    pub rate_limit: Option<RateLimitInfo>,
    /// The policy that refused the request, for the access log.
    pub limited_by: Option<Arc<str>>,
    /// Response-cache state on routes with a cache; boxed because pingora copies the context
    /// with its per-request future, and most routes have no cache.
    pub cache: Option<Box<super::caching::CacheCtx>>,
    /// Whether the one retry on another endpoint has been used.
    pub retried: bool,
    /// Keeps an HTTP/2 connection marked busy while this stream is served.
    pub(super) h2_stream: Option<super::head_timeout::H2Stream>,
    _in_flight: InFlight,
}

/// Proof that routing, authentication and limits accepted the request.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub identity: Identity,
}

impl RequestCtx {
    pub fn new(in_flight: Arc<AtomicUsize>) -> Self {
        in_flight.fetch_add(1, Ordering::AcqRel);
        RequestCtx {
            started: Instant::now(),
            snapshot: None,
            route: None,
            request_id: Default::default(),
            peer_ip: None,
            client_ip: None,
            rewritten_path: None,
            admitted: None,
            auth_outcome: None,
            token_cache: None,
            token_hash: None,
            rejection: None,
            request_body_bytes: 0,
            upstream_started: None,
            upstream_elapsed: None,
            upstream_addr: None,
            deadline: None,
            rate_limit: None,
            limited_by: None,
            cache: None,
            retried: false,
            h2_stream: None,
            _in_flight: InFlight(in_flight),
        }
    }

    pub fn route(&self) -> Option<&super::RouteRuntime> {
        let snap = self.snapshot.as_ref()?;
        snap.routes.get(self.route?)
    }
}

/// Counts the request as in flight for as long as its context lives.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
