//! Upstream pools: endpoints, round robin over the healthy ones, active health checks, and
//! the peer (address plus timeouts) each request is sent to.

use crate::config::model::UpstreamSpec;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::HttpHealthCheck;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, LoadBalancer};
use prometheus::IntGauge;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long an idle pooled connection to an upstream is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct UpstreamPool {
    pub spec: Arc<UpstreamSpec>,
    lb: LoadBalancer<RoundRobin>,
    /// Until the first health-check pass has run, `/readyz` does not trust the optimistic
    /// initial "healthy" state.
    first_check_done: AtomicBool,
    healthy_gauge: IntGauge,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool").field("name", &self.spec.name).finish()
    }
}

impl UpstreamPool {
    /// Resolves the endpoints (once, here: DNS is never on the request path) and builds the
    /// balancer with its health check.
    pub fn build(spec: Arc<UpstreamSpec>, healthy_gauge: IntGauge) -> Result<Self, String> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for ep in &spec.endpoints {
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
        if let Some(hc) = &spec.health_check {
            let mut check = HttpHealthCheck::new(&spec.sni, spec.tls);
            let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)
                .map_err(|e| format!("upstream {}: health check path: {e}", spec.name))?;
            req.insert_header("host", spec.sni.as_str())
                .map_err(|e| format!("upstream {}: health check host: {e}", spec.name))?;
            req.insert_header("user-agent", "authgate-health-check")
                .map_err(|e| format!("upstream {}: {e}", spec.name))?;
            check.req = req;
            check.peer_template.options.connection_timeout = Some(hc.timeout.min(spec.connect_timeout));
            check.peer_template.options.read_timeout = Some(hc.timeout);
            // Two failures in a row take an endpoint out; one success brings it back.
            check.consecutive_failure = 2;
            check.consecutive_success = 1;
            lb.set_health_check(Box::new(check));
            lb.health_check_frequency = Some(hc.interval);
        }
        healthy_gauge.set(addrs.len() as i64);
        Ok(UpstreamPool {
            spec,
            lb,
            first_check_done: AtomicBool::new(false),
            healthy_gauge,
        })
    }

    /// The next healthy endpoint in round-robin order.
    pub fn select(&self) -> Option<Backend> {
        self.lb.select(b"", 256)
    }

    /// The peer a request is sent to, with this upstream's timeouts.
    pub fn peer(&self, backend: &Backend) -> Option<HttpPeer> {
        let addr = *backend.addr.as_inet()?;
        let sni = if self.spec.tls { self.spec.sni.clone() } else { String::new() };
        let mut peer = HttpPeer::new(addr, self.spec.tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(self.spec.connect_timeout);
        o.total_connection_timeout = Some(self.spec.connect_timeout * 2);
        o.read_timeout = Some(self.spec.read_timeout);
        o.write_timeout = Some(self.spec.read_timeout);
        o.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        Some(peer)
    }

    pub fn healthy_endpoints(&self) -> usize {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .filter(|b| self.lb.backends().ready(b))
            .count()
    }

    /// At least one endpoint in rotation, and health known (checked once) where it is checked.
    pub fn is_ready(&self) -> bool {
        let checked = self.spec.health_check.is_none() || self.first_check_done.load(Ordering::Acquire);
        checked && self.healthy_endpoints() > 0
    }

    async fn check_once(&self) {
        self.lb.backends().run_health_check(true).await;
        self.first_check_done.store(true, Ordering::Release);
        self.healthy_gauge.set(self.healthy_endpoints() as i64);
    }
}

/// Runs the pool's active health checks until the pool is dropped (replaced by a reload) or
/// the process shuts down. Holds only a weak reference so an old pool is freed promptly.
pub async fn run_health_checks(pool: Weak<UpstreamPool>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let interval = {
            let Some(p) = pool.upgrade() else { return };
            let Some(hc) = &p.spec.health_check else { return };
            p.check_once().await;
            hc.interval
        };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
