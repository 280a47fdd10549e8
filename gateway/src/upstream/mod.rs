//! Upstream pools: endpoints, round robin over the healthy ones, active health checks, and
//! the peer (address plus timeouts) each request is sent to.
//!
//! pingora's balancer runs the active health checks; the request path reads their verdicts
//! from flags copied after each pass, so choosing an endpoint costs one counter increment and
//! a few atomic loads instead of the balancer's hashing, map lookups and backend clones.

use crate::config::model::UpstreamSpec;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::HttpHealthCheck;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::LoadBalancer;
use prometheus::IntGauge;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long an idle pooled connection to an upstream is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Passive health: this many failed connections in a row take an endpoint out of rotation...
pub const PASSIVE_FAILURES: u32 = 3;
/// ...for this long; afterwards it gets traffic again, and one more failure takes it out again.
pub const PASSIVE_COOL_DOWN: Duration = Duration::from_secs(10);

/// Why a request to an upstream failed: the `kind` label of `authgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    ConnectRefused,
    ConnectTimeout,
    ConnectError,
    Tls,
    Timeout,
    Reset,
    NoHealthyEndpoint,
    Protocol,
}

impl ErrorKind {
    const ALL: [ErrorKind; 8] = [
        ErrorKind::ConnectRefused,
        ErrorKind::ConnectTimeout,
        ErrorKind::ConnectError,
        ErrorKind::Tls,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::NoHealthyEndpoint,
        ErrorKind::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::ConnectError => "connect_error",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::NoHealthyEndpoint => "no_healthy_endpoint",
            ErrorKind::Protocol => "protocol",
        }
    }

    pub fn of(e: &pingora_core::Error) -> Self {
        use pingora_core::ErrorType::*;
        match e.etype() {
            ConnectRefused => ErrorKind::ConnectRefused,
            ConnectTimedout => ErrorKind::ConnectTimeout,
            ConnectNoRoute | ConnectError | BindError | SocketError | ConnectProxyFailure => {
                ErrorKind::ConnectError
            }
            TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError
            | TLSWantX509Lookup => ErrorKind::Tls,
            ReadTimedout | WriteTimedout => ErrorKind::Timeout,
            ReadError | WriteError | ConnectionClosed => ErrorKind::Reset,
            _ => ErrorKind::Protocol,
        }
    }

    pub fn is_connect_failure(self) -> bool {
        matches!(
            self,
            ErrorKind::ConnectRefused
                | ErrorKind::ConnectTimeout
                | ErrorKind::ConnectError
                | ErrorKind::Tls
        )
    }
}

/// One endpoint's health: the active check's last verdict, and passive health updated
/// lock-free from the request path.
struct Endpoint {
    addr: SocketAddr,
    /// The active health check's verdict after its last pass; up until the first one.
    checked_up: AtomicBool,
    failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which the endpoint is out of rotation.
    out_until_ms: AtomicU64,
}

pub struct UpstreamPool {
    pub spec: Arc<UpstreamSpec>,
    /// pingora's balancer, kept for its health checks; requests are balanced over
    /// `endpoints`.
    lb: LoadBalancer<RoundRobin>,
    /// Until the first health-check pass has run, `/readyz` does not trust the optimistic
    /// initial "healthy" state.
    first_check_done: AtomicBool,
    healthy_gauge: IntGauge,
    endpoints: Vec<Endpoint>,
    /// Round-robin position.
    next: AtomicUsize,
    epoch: Instant,
    errors: [prometheus::IntCounter; 8],
    /// CA bundle for `tls: true` upstreams; `None` means the system roots.
    ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    /// Self-signed certificates of `ca_file` that name the upstream: when there are any, the
    /// upstream must present one of them exactly (see `check_certificate`).
    pins: Vec<Arc<crate::tls::trust::Pin>>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("name", &self.spec.name)
            .finish()
    }
}

/// How a pool's endpoints become addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// Through DNS, once, when the pool is built.
    Dns,
    /// Without the network (`authgate check`): IP endpoints as given, host names as a
    /// placeholder address that is never connected to.
    Offline,
}

impl UpstreamPool {
    /// Resolves the endpoints (once, here: DNS is never on the request path) and builds the
    /// balancer with its health check.
    pub fn build(
        spec: Arc<UpstreamSpec>,
        metrics: &crate::metrics::Metrics,
        resolve: Resolve,
    ) -> Result<Self, String> {
        let healthy_gauge = metrics.gauge_for(&spec.name);
        let errors = ErrorKind::ALL.map(|k| {
            metrics
                .upstream_errors_total
                .with_label_values(&[&spec.name, k.as_str()])
        });
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for (i, ep) in spec.endpoints.iter().enumerate() {
            if resolve == Resolve::Offline {
                let placeholder = || SocketAddr::from(([0, 0, 0, 0], i as u16 + 1));
                addrs.push(ep.parse().unwrap_or_else(|_| placeholder()));
                continue;
            }
            let resolved = ep
                .to_socket_addrs()
                .map_err(|e| format!("upstream {}: cannot resolve {ep}: {e}", spec.name))?;
            // One address per configured endpoint (IPv4 first), so "localhost:8000" does not
            // silently become two endpoints, one of them a dead ::1.
            let mut resolved: Vec<SocketAddr> = resolved.collect();
            resolved.sort_by_key(|a| a.is_ipv6());
            let first = resolved
                .first()
                .copied()
                .ok_or_else(|| format!("upstream {}: {ep} resolves to no address", spec.name))?;
            if !addrs.contains(&first) {
                addrs.push(first);
            }
        }
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().map(|a| a.to_string()))
            .map_err(|e| format!("upstream {}: {e}", spec.name))?;
        let (ca, pins) = match (&spec.tls, &spec.ca) {
            (true, Some(bundle)) => (
                Some(crate::tls::pingora_cas(bundle)),
                bundle.pins_for(&spec.sni),
            ),
            _ => (None, Vec::new()),
        };
        if let Some(hc) = &spec.health_check {
            let mut check = HttpHealthCheck::new(&spec.sni, spec.tls);
            let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)
                .map_err(|e| format!("upstream {}: health check path: {e}", spec.name))?;
            req.insert_header("host", spec.sni.as_str())
                .map_err(|e| format!("upstream {}: health check host: {e}", spec.name))?;
            req.insert_header("user-agent", "authgate-health-check")
                .map_err(|e| format!("upstream {}: {e}", spec.name))?;
            check.req = req;
            check.peer_template.options.connection_timeout =
                Some(hc.timeout.min(spec.connect_timeout));
            check.peer_template.options.read_timeout = Some(hc.timeout);
            // Checks trust what requests trust: the upstream's CA bundle. A pinned certificate
            // cannot be matched here (no post-handshake hook), so such an upstream's checks
            // only prove liveness; requests are still matched against the pin.
            check.peer_template.options.ca = ca.clone();
            if !pins.is_empty() {
                check.peer_template.options.verify_cert = false;
                check.peer_template.options.verify_hostname = false;
            }
            // Two failures in a row take an endpoint out; one success brings it back.
            check.consecutive_failure = 2;
            check.consecutive_success = 1;
            // Checks are run by `run_health_checks` on `hc.interval`, not by the balancer's
            // background service.
            lb.set_health_check(Box::new(check));
        }
        healthy_gauge.set(addrs.len() as i64);
        let endpoints = addrs
            .iter()
            .map(|a| Endpoint {
                addr: *a,
                checked_up: AtomicBool::new(true),
                failures: AtomicU32::new(0),
                out_until_ms: AtomicU64::new(0),
            })
            .collect();
        Ok(UpstreamPool {
            ca,
            pins,
            spec,
            lb,
            first_check_done: AtomicBool::new(false),
            healthy_gauge,
            endpoints,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            errors,
        })
    }

    /// The next endpoint in round-robin order that both health checks and recent traffic
    /// consider up, other than `avoid` (the one a retry is moving away from).
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        let n = self.endpoints.len();
        // One endpoint needs no position: no write to a counter shared by every thread.
        let start = if n > 1 {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        (0..n)
            .map(|i| &self.endpoints[start.wrapping_add(i) % n])
            .find(|e| Some(e.addr) != avoid && self.in_rotation(e))
            .map(|e| e.addr)
    }

    fn in_rotation(&self, e: &Endpoint) -> bool {
        e.checked_up.load(Ordering::Relaxed) && self.passively_up(e)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn endpoint(&self, addr: SocketAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }

    fn passively_up(&self, e: &Endpoint) -> bool {
        // 0: never taken out, the usual case, decided without reading the clock.
        let until = e.out_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= self.now_ms()
    }

    /// Counts a failure; connection failures in a row take the endpoint out for a cool-down.
    pub fn report_failure(&self, addr: Option<SocketAddr>, kind: ErrorKind) {
        self.errors[kind as usize].inc();
        if !kind.is_connect_failure() {
            return;
        }
        let Some(e) = addr.and_then(|a| self.endpoint(a)) else {
            return;
        };
        let n = e.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= PASSIVE_FAILURES {
            let until = self.now_ms() + PASSIVE_COOL_DOWN.as_millis() as u64;
            if e.out_until_ms.swap(until, Ordering::Relaxed) <= self.now_ms() {
                tracing::warn!(upstream = %self.spec.name, endpoint = %e.addr, failures = n, cool_down_s = PASSIVE_COOL_DOWN.as_secs(), "endpoint taken out of rotation");
            }
            self.healthy_gauge.set(self.healthy_endpoints() as i64);
        }
    }

    pub fn report_no_endpoint(&self) {
        self.errors[ErrorKind::NoHealthyEndpoint as usize].inc();
    }

    pub fn report_success(&self, addr: Option<SocketAddr>) {
        if let Some(e) = addr.and_then(|a| self.endpoint(a)) {
            // A load, not a store, in the common case: no cache-line write per request.
            if e.failures.load(Ordering::Relaxed) != 0 {
                e.failures.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The peer a request is sent to, with this upstream's timeouts.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let sni = if self.spec.tls {
            self.spec.sni.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, self.spec.tls, sni);
        let o = &mut peer.options;
        if self.spec.tls {
            // pingora's rustls verifier refuses a server certificate marked CA:TRUE, which is
            // what `openssl req -x509` makes: with pins, chain checks give way to an exact
            // match after the handshake (whose signature rustls still verifies).
            o.verify_cert = self.pins.is_empty();
            o.verify_hostname = self.pins.is_empty();
            o.ca = self.ca.clone();
        }
        o.connection_timeout = Some(self.spec.connect_timeout);
        o.total_connection_timeout = Some(self.spec.connect_timeout * 2);
        o.read_timeout = Some(self.spec.read_timeout);
        o.write_timeout = Some(self.spec.read_timeout);
        o.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        // Answers are rewritten with canonical names (PATCHES.md, patch 2).
        o.discard_header_case = true;
        peer
    }

    /// For an upstream with pinned certificates: the one presented must be one of them and
    /// within its validity period. Runs on every connection before anything is sent on it.
    pub fn check_certificate(
        &self,
        digest: Option<&pingora_core::protocols::Digest>,
    ) -> Result<(), &'static str> {
        if self.pins.is_empty() {
            return Ok(());
        }
        let presented = digest
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|d| d.cert_digest.as_slice())
            .unwrap_or_default();
        let Some(p) = self.pins.iter().find(|p| p.sha256[..] == *presented) else {
            return Err("the upstream's certificate is not the one pinned in ca_file");
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if p.valid_at(now) {
            Ok(())
        } else {
            Err("the pinned certificate of the upstream is expired or not yet valid")
        }
    }

    pub fn healthy_endpoints(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|e| self.in_rotation(e))
            .count()
    }

    /// At least one endpoint in rotation, and health known (checked once) where it is checked.
    pub fn is_ready(&self) -> bool {
        let checked =
            self.spec.health_check.is_none() || self.first_check_done.load(Ordering::Acquire);
        checked && self.healthy_endpoints() > 0
    }

    async fn check_once(&self) {
        let backends = self.lb.backends();
        backends.run_health_check(true).await;
        for b in backends.get_backend().iter() {
            if let Some(e) = b.addr.as_inet().and_then(|a| self.endpoint(*a)) {
                e.checked_up.store(backends.ready(b), Ordering::Relaxed);
            }
        }
        self.first_check_done.store(true, Ordering::Release);
        self.healthy_gauge.set(self.healthy_endpoints() as i64);
    }
}

/// Runs the pool's active health checks until the pool is dropped (replaced by a reload) or
/// the process shuts down. Holds only a weak reference so an old pool is freed promptly.
pub async fn run_health_checks(
    pool: Weak<UpstreamPool>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let interval = {
            let Some(p) = pool.upgrade() else { return };
            let Some(hc) = &p.spec.health_check else {
                return;
            };
            p.check_once().await;
            hc.interval
        };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn pool(endpoints: &[&str]) -> UpstreamPool {
        let spec = UpstreamSpec {
            index: 0,
            name: "app".into(),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            tls: false,
            ca: None,
            sni: String::new(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(5),
            health_check: None,
        };
        UpstreamPool::build(Arc::new(spec), &Metrics::new(), Resolve::Dns).expect("pool builds")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let p = pool(&["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"]);
        let picks: Vec<_> = (0..6)
            .map(|_| p.select(None).expect("an endpoint"))
            .collect();
        assert_eq!(picks[..3], picks[3..], "the order repeats");
        let mut first: Vec<_> = picks[..3].to_vec();
        first.sort();
        assert_eq!(
            first,
            [
                addr("127.0.0.1:1001"),
                addr("127.0.0.1:1002"),
                addr("127.0.0.1:1003")
            ]
        );
    }

    #[test]
    fn a_retry_avoids_the_endpoint_that_failed() {
        let p = pool(&["127.0.0.1:1001", "127.0.0.1:1002"]);
        for _ in 0..4 {
            assert_eq!(
                p.select(Some(addr("127.0.0.1:1001"))),
                Some(addr("127.0.0.1:1002"))
            );
        }
        let single = pool(&["127.0.0.1:1001"]);
        assert_eq!(single.select(Some(addr("127.0.0.1:1001"))), None);
        assert_eq!(single.select(None), Some(addr("127.0.0.1:1001")));
    }

    #[test]
    fn endpoints_failing_checks_or_connections_leave_the_rotation() {
        let p = pool(&["127.0.0.1:1001", "127.0.0.1:1002"]);
        assert_eq!(p.healthy_endpoints(), 2);
        // The active check took the first one out.
        p.endpoints[0].checked_up.store(false, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(p.select(None), Some(addr("127.0.0.1:1002")));
        }
        assert_eq!(p.healthy_endpoints(), 1);
        // Connections to the second one keep failing: passive health takes it out too.
        for _ in 0..PASSIVE_FAILURES {
            p.report_failure(Some(addr("127.0.0.1:1002")), ErrorKind::ConnectRefused);
        }
        assert_eq!(p.select(None), None);
        assert_eq!(p.healthy_endpoints(), 0);
        assert!(!p.is_ready());
        // A timeout after connecting is not a connection failure and takes nothing out.
        p.endpoints[0].checked_up.store(true, Ordering::Relaxed);
        for _ in 0..PASSIVE_FAILURES {
            p.report_failure(Some(addr("127.0.0.1:1001")), ErrorKind::Timeout);
        }
        assert_eq!(p.select(None), Some(addr("127.0.0.1:1001")));
    }
}
