//! The request path: shared state, the per-request context, and the pingora `ProxyHttp`
//! implementation that walks each request through route -> authenticate -> limit -> forward.

pub mod ctx;
pub mod gateway;
pub mod headers;
pub mod respond;

use crate::auth::jwks::JwksStore;
use crate::auth::{Authenticator, KeyStores};
use crate::config::model::RouteSpec;
use crate::config::Config;
use crate::metrics::{Metrics, RouteMetrics};
use crate::route::Router;
use crate::upstream::UpstreamPool;
use arc_swap::ArcSwap;
use respond::AuthTexts;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// One configuration version with everything built from it. Requests load it once and use it
/// to the end, so a reload never mixes two versions within one request.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Vec<RouteRuntime>,
    pub upstreams: Vec<Arc<UpstreamPool>>,
    pub auth_texts: AuthTexts,
    pub auth: Authenticator,
    /// Metrics for requests no route accepted (404, malformed paths).
    pub unmatched: RouteMetrics,
}

pub struct NotReady<'a> {
    pub upstreams: Vec<&'a str>,
    pub jwks_providers: Vec<&'a str>,
}

impl NotReady<'_> {
    pub fn is_ready(&self) -> bool {
        self.upstreams.is_empty() && self.jwks_providers.is_empty()
    }
}

/// Work that runs beside the proxy for as long as its object lives.
pub enum Background {
    HealthChecks(std::sync::Weak<UpstreamPool>),
    JwksRefresh(std::sync::Weak<JwksStore>),
}

/// A route with its resolved parts.
pub struct RouteRuntime {
    pub spec: Arc<RouteSpec>,
    pub upstream: Arc<UpstreamPool>,
    pub metrics: RouteMetrics,
    pub upstream_duration: prometheus::Histogram,
    pub timeouts: prometheus::IntCounter,
}

impl Snapshot {
    pub fn build(
        config: Config,
        generation: u64,
        metrics: &Metrics,
        stores: &KeyStores,
    ) -> Result<Self, String> {
        let config = Arc::new(config);
        let auth = Authenticator::build(&config.auth, stores, metrics)?;
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for spec in &config.upstreams {
            upstreams.push(Arc::new(UpstreamPool::build(spec.clone(), metrics)?));
        }
        let routes = config
            .routes
            .iter()
            .map(|spec| RouteRuntime {
                spec: spec.clone(),
                upstream: upstreams[spec.upstream].clone(),
                metrics: metrics.route(&spec.name),
                upstream_duration: metrics
                    .upstream_duration
                    .with_label_values(&[&spec.name, &upstreams[spec.upstream].spec.name]),
                timeouts: metrics
                    .upstream_timeouts_total
                    .with_label_values(&[&spec.name]),
            })
            .collect();
        let auth_texts = AuthTexts {
            realm: config.auth.realm.clone(),
            refresh_endpoint: config.auth.refresh_endpoint.clone(),
            login_endpoint: config.auth.login_endpoint.clone(),
        };
        Ok(Snapshot {
            generation,
            router: Router::new(config.routes.clone()),
            routes,
            upstreams,
            auth_texts,
            auth,
            unmatched: metrics.route("unmatched"),
            config,
        })
    }

    /// What keeps this version from being ready: upstreams without a healthy endpoint and
    /// JWKS providers that never loaded their keys.
    pub fn not_ready(&self) -> NotReady<'_> {
        NotReady {
            upstreams: self
                .upstreams
                .iter()
                .filter(|u| !u.is_ready())
                .map(|u| u.spec.name.as_str())
                .collect(),
            jwks_providers: self.auth.keys_loaded(),
        }
    }
}

/// State shared by every worker thread and the admin listener.
pub struct Shared {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    pub metrics: Arc<Metrics>,
    pub key_stores: KeyStores,
    /// Requests between header read and logging; lets shutdown end as soon as they finish.
    pub in_flight: Arc<AtomicUsize>,
    /// New pools whose health checks must start.
    health_tx: UnboundedSender<Background>,
}

impl Shared {
    /// `build` makes the first configuration version with the shared key stores.
    pub fn new(
        build: impl FnOnce(&Metrics, &KeyStores) -> Result<Snapshot, String>,
        metrics: Arc<Metrics>,
        health_tx: UnboundedSender<Background>,
    ) -> Result<Self, String> {
        let key_stores = KeyStores::default();
        let snapshot = build(&metrics, &key_stores)?;
        let shared = Shared {
            generation: AtomicU64::new(snapshot.generation),
            current: ArcSwap::from_pointee(snapshot),
            metrics,
            key_stores,
            in_flight: Arc::new(AtomicUsize::new(0)),
            health_tx,
        };
        shared.start_background(&shared.snapshot());
        Ok(shared)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Swaps in a new configuration version; requests already running finish on the old one.
    pub fn install(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        self.start_background(&snapshot);
        self.key_stores.retain(&snapshot.auth.stores);
        self.current.store(snapshot);
    }

    fn start_background(&self, snapshot: &Snapshot) {
        // The receiver lives as long as the server; if it is gone we are shutting down.
        for pool in &snapshot.upstreams {
            if pool.spec.health_check.is_some() {
                let _ = self
                    .health_tx
                    .send(Background::HealthChecks(Arc::downgrade(pool)));
            }
        }
        for store in &snapshot.auth.new_stores {
            let _ = self
                .health_tx
                .send(Background::JwksRefresh(Arc::downgrade(store)));
        }
    }
}
