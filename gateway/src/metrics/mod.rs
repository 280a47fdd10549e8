//! Prometheus metrics. Every family is registered once at start; routes resolve their labelled
//! handles when a configuration is compiled, so a request only indexes an array and adds.

use http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;

/// Buckets from 100 µs (gateway-only answers) to 30 s (slow upstream calls).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub auth_total: IntCounterVec,
    pub auth_denials_total: IntCounterVec,
    pub auth_shadow_total: IntCounterVec,
    pub dpop_replay_total: IntCounterVec,
    pub token_cache_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub upstream_timeouts_total: IntCounterVec,
    pub upstream_errors_total: IntCounterVec,
    pub redis_errors_total: IntCounterVec,
    pub jwks_refresh_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    pub healthy_endpoints: IntGaugeVec,
    pub rate_limit_keys: IntGaugeVec,
    pub response_cache_total: IntCounterVec,
    pub rate_limit_fallbacks_total: IntCounterVec,
    pub rate_limit_overflow_total: IntCounterVec,
    pub header_timeouts_total: IntCounter,
    pub log_lines_dropped_total: IntCounter,
    pub idle_timeouts_total: IntCounter,
    pub build_info: IntGaugeVec,
}

// Metric construction only fails on invalid names or duplicate registration, both programming
// errors fixed at compile time of this file; the tests below exercise every one.
#[allow(clippy::expect_used)]
impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let m = Metrics {
            requests_total: counter(
                "authgate_requests_total",
                "Requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            request_duration: histogram(
                "authgate_request_duration_seconds",
                "Whole request as the client sees it.",
                &["route"],
            ),
            upstream_duration: histogram(
                "authgate_upstream_duration_seconds",
                "From sending the request upstream to the response header.",
                &["route", "upstream"],
            ),
            auth_total: counter(
                "authgate_auth_total",
                "Authentication decisions, by provider and outcome.",
                &["provider", "outcome"],
            ),
            auth_denials_total: counter(
                "authgate_auth_denials_total",
                "Denials by provider and fixed reason code.",
                &["provider", "reason"],
            ),
            auth_shadow_total: counter(
                "authgate_auth_shadow_total",
                "Decisions on mode: shadow routes, by what they would have been.",
                &["route", "outcome"],
            ),
            dpop_replay_total: counter(
                "authgate_dpop_replay_total",
                "DPoP proof jti checks: fresh, replay, full (the local set at its bound) and \
                 local_only (Redis could not be asked; the local set alone decided).",
                &["result"],
            ),
            token_cache_total: counter(
                "authgate_token_cache_total",
                "Validated-token cache lookups.",
                &["tier", "result"],
            ),
            rate_limited_total: counter(
                "authgate_rate_limited_total",
                "Requests refused by a rate-limit policy.",
                &["route", "policy"],
            ),
            upstream_timeouts_total: counter(
                "authgate_upstream_timeouts_total",
                "Requests whose route deadline passed.",
                &["route"],
            ),
            upstream_errors_total: counter(
                "authgate_upstream_errors_total",
                "Upstream failures by kind.",
                &["upstream", "kind"],
            ),
            redis_errors_total: counter(
                "authgate_redis_errors_total",
                "Failed Redis operations.",
                &["op"],
            ),
            jwks_refresh_total: counter(
                "authgate_jwks_refresh_total",
                "JWKS fetches by provider and result.",
                &["provider", "result"],
            ),
            config_reloads_total: counter(
                "authgate_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            ),
            healthy_endpoints: gauge(
                "authgate_upstream_healthy_endpoints",
                "Endpoints of each upstream currently in rotation.",
                &["upstream"],
            ),
            response_cache_total: counter(
                "authgate_response_cache_total",
                "Response-cache outcomes on routes with a cache.",
                &["route", "result"],
            ),
            rate_limit_keys: gauge(
                "authgate_rate_limit_keys",
                "Keys held by each policy's in-process limiter.",
                &["policy"],
            ),
            rate_limit_fallbacks_total: counter(
                "authgate_rate_limit_fallbacks_total",
                "Shared-policy checks answered by the local limiter because Redis did not answer.",
                &["policy"],
            ),
            rate_limit_overflow_total: counter(
                "authgate_rate_limit_overflow_total",
                "Requests judged by a policy's shared overflow bucket because its key table was full.",
                &["policy"],
            ),
            log_lines_dropped_total: {
                let c = IntCounter::new(
                    "authgate_log_lines_dropped_total",
                    "Log lines (access and others) dropped because stderr did not keep up and \
                     the log queue was full.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            header_timeouts_total: {
                let c = IntCounter::new(
                    "authgate_header_timeouts_total",
                    "Connections closed because a request head took longer than server.header_timeout.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            idle_timeouts_total: {
                let c = IntCounter::new(
                    "authgate_idle_timeouts_total",
                    "HTTP/2 connections closed after server.idle_timeout with no request in flight.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            build_info: gauge("authgate_build_info", "Build information.", &["version"]),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Both series exist from the start, so `increase()` sees a replica's first failure.
        for result in ["ok", "error"] {
            m.config_reloads_total.with_label_values(&[result]);
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string(),
            duration: self.request_duration.with_label_values(&[route]),
            requests: self.requests_total.clone(),
            by_method_status: (0..METHODS.len()).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn gauge_for(&self, upstream: &str) -> IntGauge {
        self.healthy_endpoints.with_label_values(&[upstream])
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Method label values; anything else is counted as `OTHER` so clients cannot mint series.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

const STATUS_MIN: u16 = 100;
const STATUS_SPAN: usize = 500;

/// One route's handles. Counters per (method, status) are resolved on first use and kept, so
/// after warm-up a request costs two atomic adds and no label lookup.
pub struct RouteMetrics {
    route: String,
    duration: Histogram,
    requests: IntCounterVec,
    by_method_status: Vec<OnceLock<Box<[OnceLock<IntCounter>]>>>,
}

impl RouteMetrics {
    pub fn observe(&self, method: &Method, status: u16, seconds: f64) {
        self.duration.observe(seconds);
        let mi = method_index(method);
        let status = status.clamp(STATUS_MIN, STATUS_MIN + STATUS_SPAN as u16 - 1);
        let row = self.by_method_status[mi]
            .get_or_init(|| (0..STATUS_SPAN).map(|_| OnceLock::new()).collect());
        let counter = row[usize::from(status - STATUS_MIN)].get_or_init(|| {
            self.requests.with_label_values(&[
                self.route.as_str(),
                METHODS[mi],
                &status.to_string(),
            ])
        });
        counter.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_family_is_exported() {
        let m = Metrics::new();
        let r = m.route("api");
        r.observe(&Method::GET, 200, 0.001);
        r.observe(&Method::GET, 200, 0.002);
        r.observe(&Method::from_bytes(b"BREW").expect("method"), 418, 0.001);
        m.auth_total.with_label_values(&["p", "ok"]).inc();
        m.auth_denials_total
            .with_label_values(&["p", "bad_signature"])
            .inc();
        m.token_cache_total
            .with_label_values(&["local", "hit"])
            .inc();
        m.rate_limited_total
            .with_label_values(&["api", "user"])
            .inc();
        m.upstream_timeouts_total.with_label_values(&["api"]).inc();
        m.upstream_errors_total
            .with_label_values(&["lms", "refused"])
            .inc();
        m.redis_errors_total.with_label_values(&["get"]).inc();
        m.jwks_refresh_total.with_label_values(&["p", "ok"]).inc();
        m.config_reloads_total.with_label_values(&["ok"]).inc();
        m.upstream_duration
            .with_label_values(&["api", "lms"])
            .observe(0.1);
        let text = String::from_utf8(m.render()).expect("utf8");
        for name in [
            "authgate_requests_total",
            "authgate_request_duration_seconds",
            "authgate_upstream_duration_seconds",
            "authgate_auth_total",
            "authgate_auth_denials_total",
            "authgate_token_cache_total",
            "authgate_rate_limited_total",
            "authgate_upstream_timeouts_total",
            "authgate_upstream_errors_total",
            "authgate_redis_errors_total",
            "authgate_jwks_refresh_total",
            "authgate_config_reloads_total",
            "authgate_build_info",
            "authgate_header_timeouts_total",
            "authgate_idle_timeouts_total",
            "authgate_log_lines_dropped_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(
            text.contains(r#"authgate_requests_total{method="GET",route="api",status="200"} 2"#)
        );
        assert!(
            text.contains(r#"authgate_requests_total{method="OTHER",route="api",status="418"} 1"#)
        );
    }
}
