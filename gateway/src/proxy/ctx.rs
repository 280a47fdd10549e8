//! Per-request state carried between the proxy phases.

use crate::answer::{RateLimitInfo, Rejection};
use crate::auth::Principal;
use crate::deadline::Deadline;
use crate::pipeline::{Admitted, AuthTrace, Denied};
use crate::snapshot::Snapshot;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub struct RequestCtx {
    pub started: Instant,
    /// The configuration version this request is judged by, loaded once.
    pub snapshot: Option<Arc<Snapshot>>,
    pub request_id: super::headers::RequestId,
    pub peer_ip: Option<IpAddr>,
    pub client_ip: Option<IpAddr>,
    /// What admission decided; forwarding requires `Admitted`, which only admission builds.
    pub stage: Stage,
    /// An answer decided in a later phase, rendered by `fail_to_proxy`.
    pub rejection: Option<Rejection>,
    pub request_body_bytes: u64,
    pub upstream_started: Option<Instant>,
    pub upstream_elapsed: Option<std::time::Duration>,
    pub upstream_addr: Option<std::net::SocketAddr>,
    /// Response-cache state on routes with a cache; boxed because most routes have none.
    pub cache: Option<Box<super::caching::CacheCtx>>,
    /// Whether the one retry on another endpoint has been used.
    pub retried: bool,
    /// Keeps an HTTP/2 connection marked busy while this stream is served.
    pub(super) h2_stream: Option<super::head_timeout::H2Stream>,
    _in_flight: InFlight,
}

/// Where a request is on its journey.
#[derive(Debug)]
pub enum Stage {
    /// Read, not yet judged.
    Received,
    Admitted(Admitted),
    Denied(Denied),
}

impl RequestCtx {
    pub fn new(in_flight: Arc<AtomicUsize>) -> Self {
        in_flight.fetch_add(1, Ordering::AcqRel);
        RequestCtx {
            started: Instant::now(),
            snapshot: None,
            request_id: Default::default(),
            peer_ip: None,
            client_ip: None,
            stage: Stage::Received,
            rejection: None,
            request_body_bytes: 0,
            upstream_started: None,
            upstream_elapsed: None,
            upstream_addr: None,
            cache: None,
            retried: false,
            h2_stream: None,
            _in_flight: InFlight(in_flight),
        }
    }

    /// The matched route, admitted or denied.
    pub fn route(&self) -> Option<&crate::snapshot::RoutePipeline> {
        let index = match &self.stage {
            Stage::Admitted(a) => a.route(),
            Stage::Denied(d) => d.route?,
            Stage::Received => return None,
        };
        self.snapshot.as_ref()?.routes.get(index)
    }

    pub fn admitted(&self) -> Option<&Admitted> {
        match &self.stage {
            Stage::Admitted(a) => Some(a),
            _ => None,
        }
    }

    pub fn principal(&self) -> Option<&Principal> {
        self.admitted()?.identity().principal()
    }

    pub fn deadline(&self) -> Option<Deadline> {
        self.admitted()?.deadline()
    }

    /// The tightest policy's state on an admitted request of a limited route.
    pub fn rate_limit(&self) -> Option<&RateLimitInfo> {
        self.admitted()?.rate_limit()
    }

    /// Each checked policy's state (admitted or denied), for the `RateLimit` header.
    pub fn limit_states(&self) -> &[RateLimitInfo] {
        match &self.stage {
            Stage::Admitted(a) => a.limit_states(),
            Stage::Denied(d) => &d.limit_states,
            Stage::Received => &[],
        }
    }

    pub fn auth_trace(&self) -> Option<&AuthTrace> {
        match &self.stage {
            Stage::Admitted(a) => Some(a.auth()),
            Stage::Denied(d) => Some(&d.auth),
            Stage::Received => None,
        }
    }

    /// The policy that refused the request.
    pub fn limited_by(&self) -> Option<&str> {
        match &self.stage {
            Stage::Denied(d) => d.limited_by(),
            _ => None,
        }
    }
}

/// Counts the request as in flight for as long as its context lives.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
