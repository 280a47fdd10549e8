//! Configuration versions and what outlives them: a [`Snapshot`] is one version with everything
//! built from it (routes, providers, limiters, upstream pools, metric handles), [`Reusable`]
//! the stateful parts kept across versions, [`Shared`] what every worker and the admin
//! listener hold. Admission (`pipeline`) and the proxy (`proxy`) both read them; neither owns
//! them.

use crate::answer::AuthTexts;
use crate::auth::jwks::JwksStore;
use crate::auth::{AuthState, Authenticator, KeyStores};
use crate::config::model::{ResponseCacheSettings, RouteSpec};
use crate::config::Config;
use crate::metrics::{Metrics, RouteMetrics};
use crate::ratelimit::{LimiterRegistry, Limiters};
use crate::redis_link::RedisLink;
use crate::respcache::{CacheResult, ResponseCache};
use crate::route::Router;
use crate::tier::SharedTier;
use crate::upstream::UpstreamPool;
use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc::UnboundedSender;

/// One configuration version with everything built from it. Requests load it once and use it
/// to the end, so a reload never mixes two versions within one request.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Vec<RoutePipeline>,
    pub upstreams: Vec<Arc<UpstreamPool>>,
    pub auth_texts: AuthTexts,
    pub auth: Authenticator,
    pub limiters: Limiters,
    pub redis: Option<Arc<RedisLink>>,
    /// What `redis` is kept under in [`Reusable`].
    redis_fingerprint: Option<String>,
    pub response_cache: Arc<ResponseCache>,
    /// Metrics for requests no route accepted (404, malformed paths).
    pub unmatched: RouteMetrics,
    /// Signs `upstream_assertion`s, when configured.
    pub assertion: Option<crate::assertion::Signer>,
}

/// Whether a version is built to serve, or only to be checked (`authgate check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    Serving,
    Offline,
}

/// A route compiled for one configuration version: its spec, upstream pool, limit phases,
/// the constant header values it answers with, and its metric handles. Admission
/// (`crate::pipeline`) and forwarding (`crate::proxy::forward`) read it; nothing changes it.
pub struct RoutePipeline {
    pub spec: Arc<RouteSpec>,
    pub upstream: Arc<UpstreamPool>,
    pub metrics: RouteMetrics,
    pub upstream_duration: Histogram,
    pub timeouts: IntCounter,
    /// The route's policies spent before authentication, and those spent after it.
    pub limits: LimitPhases,
    /// `authgate_response_cache_total{route, result}` by `CacheResult`; empty without a cache.
    pub cache_results: Vec<IntCounter>,
    /// The route's draft-11 `RateLimit-Policy` value, constant per configuration.
    pub ratelimit_policy: Option<http::HeaderValue>,
    /// `authgate_auth_shadow_total{route, outcome}` by `Outcome`, on `mode: shadow` routes.
    pub shadow: Option<[IntCounter; 7]>,
}

impl RoutePipeline {
    /// Everything one route needs per request, resolved once per configuration version: its
    /// policies split by phase with their counters, the constant `RateLimit-Policy` value, and
    /// the metric handles, so the hot path never builds a label set.
    fn build(
        spec: &Arc<RouteSpec>,
        config: &Config,
        upstream: Arc<UpstreamPool>,
        metrics: &Metrics,
    ) -> Self {
        let counter = |i: usize| {
            metrics
                .rate_limited_total
                .with_label_values(&[&*spec.name, &*config.rate_limits[i].name])
        };
        let mut limits = LimitPhases {
            failures_counter: config.auth.failure_limit.as_ref().map(|f| {
                metrics
                    .rate_limited_total
                    .with_label_values(&[&*spec.name, &*f.name])
            }),
            ..LimitPhases::default()
        };
        for &i in &spec.rate_limits {
            if config.rate_limits[i].key.before_auth() {
                limits.before_auth.push(i);
                limits.before_auth_counters.push(counter(i));
            } else {
                limits.after_auth.push(i);
                limits.after_auth_counters.push(counter(i));
            }
        }
        RoutePipeline {
            shadow: (spec.auth_mode == crate::config::model::AuthMode::Shadow).then(|| {
                crate::auth::Outcome::ALL.map(|o| {
                    metrics
                        .auth_shadow_total
                        .with_label_values(&[&spec.name, o.as_str()])
                })
            }),
            ratelimit_policy: crate::ratelimit::policy_header(
                spec.rate_limits.iter().map(|&i| &*config.rate_limits[i]),
            ),
            limits,
            metrics: metrics.route(&spec.name),
            upstream_duration: metrics
                .upstream_duration
                .with_label_values(&[&spec.name, &upstream.spec.name]),
            timeouts: metrics
                .upstream_timeouts_total
                .with_label_values(&[&spec.name]),
            cache_results: if spec.cache.is_some() {
                CacheResult::ALL
                    .iter()
                    .map(|r| {
                        metrics
                            .response_cache_total
                            .with_label_values(&[&spec.name, r.label()])
                    })
                    .collect()
            } else {
                Vec::new()
            },
            upstream,
            spec: spec.clone(),
        }
    }
}

/// A route's policies (indices into the snapshot's), split by when they are spent, each with
/// its `authgate_rate_limited_total` counter.
#[derive(Default)]
pub struct LimitPhases {
    pub before_auth: Vec<usize>,
    pub before_auth_counters: Vec<IntCounter>,
    pub after_auth: Vec<usize>,
    pub after_auth_counters: Vec<IntCounter>,
    /// `authgate_rate_limited_total{route, policy="auth_failures"}` with `auth.failure_limit`.
    pub failures_counter: Option<IntCounter>,
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
    HealthChecks(Weak<UpstreamPool>),
    JwksRefresh(Weak<JwksStore>),
}

/// Stateful parts that outlive a configuration version when their settings do not change:
/// JWKS key stores, limiter buckets, the token and response caches, the Redis connection.
///
/// A reload is all or nothing: building a version only reads these slots (taking the running
/// part, or making a new one that belongs to the version), and only [`Shared::install`] writes
/// them. A version that fails anywhere is dropped with its new parts, and nothing running
/// changed.
#[derive(Default)]
pub struct Reusable {
    pub key_stores: KeyStores,
    pub limiters: LimiterRegistry,
    pub auth: AuthState,
    redis: Mutex<Option<(String, Arc<RedisLink>)>>,
    response_cache: Mutex<Option<Arc<ResponseCache>>>,
    /// What `/.well-known/jwks.json` serves: the assertion key, and the previous one for a
    /// while after a change.
    pub published_keys: crate::assertion::PublishedKeys,
}

impl Reusable {
    fn response_cache(&self, s: &ResponseCacheSettings) -> Arc<ResponseCache> {
        let slot = self
            .response_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot
            .as_ref()
            .filter(|c| c.max_size == s.max_size && c.max_entry_size as u64 == s.max_entry_size)
        {
            return c.clone();
        }
        Arc::new(ResponseCache::new(s.max_size, s.max_entry_size))
    }

    /// The running link when the settings are unchanged, else a new (lazy, not yet connected)
    /// one, with the fingerprint it is kept under.
    fn redis(
        &self,
        config: &Config,
        metrics: &Metrics,
    ) -> Result<Option<(String, Arc<RedisLink>)>, String> {
        let Some(settings) = &config.redis else {
            return Ok(None);
        };
        let fingerprint = settings.fingerprint();
        let slot = self.redis.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((fp, link)) = slot.as_ref() {
            if *fp == fingerprint {
                return Ok(Some((fingerprint, link.clone())));
            }
        }
        Ok(Some((fingerprint, RedisLink::new(settings, metrics)?)))
    }

    /// Makes an installed version's parts the running ones: the one place these slots change.
    fn commit(&self, snapshot: &Snapshot) -> Result<(), String> {
        // The one step that can fail goes first, so a failure leaves every slot as it was.
        let mut slot = self.redis.lock().unwrap_or_else(|p| p.into_inner());
        match (&snapshot.redis, &snapshot.redis_fingerprint) {
            (Some(link), Some(fp)) => {
                if !slot.as_ref().is_some_and(|(_, l)| Arc::ptr_eq(l, link)) {
                    // A new link: its revocation events and outbox retries start with it.
                    crate::redis_link::spawn(crate::auth::revoke::listen(
                        Arc::downgrade(link),
                        Arc::downgrade(&self.auth.revocations),
                    ))?;
                    crate::redis_link::spawn(crate::auth::revoke::retry_outbox(
                        Arc::downgrade(link),
                        Arc::downgrade(&self.auth.revocations),
                    ))?;
                    crate::redis_link::spawn(crate::auth::dpop::nonce::share(
                        Arc::downgrade(link),
                        Arc::downgrade(&self.auth.nonces),
                    ))?;
                    *slot = Some((fp.clone(), link.clone()));
                }
            }
            _ => *slot = None,
        }
        self.key_stores.commit(&snapshot.auth.store_entries);
        self.limiters.commit(&snapshot.limiters.all());
        self.auth
            .commit(&snapshot.auth.cache, snapshot.config.auth.revocation_ttl);
        *self
            .response_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(snapshot.response_cache.clone());
        self.published_keys.commit(
            snapshot.config.upstream_assertion.as_deref(),
            std::time::Instant::now(),
        );
        Ok(())
    }
}

impl Snapshot {
    /// Fetches the key sets of JWKS stores this version created, once, before it serves. An
    /// identity provider that cannot be reached does not stop the gateway (contract, "Token
    /// semantics"): the store's background refresh keeps trying, `/readyz` says 503 until its keys
    /// arrive, and its tokens get 503 `auth_unavailable` meanwhile (static keys keep working).
    pub fn load_new_key_sets(&self) {
        if self.auth.new_stores.is_empty() {
            return;
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a runtime for JWKS fetches; the background refresh will load them");
                return;
            }
        };
        for store in &self.auth.new_stores {
            // A failure is logged (with its cause) by `fetch`; the store stays not ready.
            let _ = rt.block_on(store.fetch());
        }
    }

    /// What replicas share, when Redis is configured.
    pub fn shared(&self) -> Option<&dyn SharedTier> {
        self.redis.as_deref().map(|r| r as &dyn SharedTier)
    }

    pub fn build(
        config: Config,
        generation: u64,
        metrics: &Metrics,
        reuse: &Reusable,
    ) -> Result<Self, String> {
        Self::build_as(config, generation, metrics, reuse, Build::Serving)
    }

    /// What `authgate check` runs: the same build as start-up and reload, offline. Every key,
    /// CA bundle, HTTP client, provider, limiter, route and upstream pool is made as it would
    /// be (and refused as it would be), except what needs the network: upstream host names
    /// are not resolved (IP endpoints are used as given) and no Redis link is made.
    pub fn check(config: Config) -> Result<(), String> {
        let reuse = Reusable::default();
        Self::build_as(config, 0, &Metrics::new(), &reuse, Build::Offline).map(drop)
    }

    fn build_as(
        config: Config,
        generation: u64,
        metrics: &Metrics,
        reuse: &Reusable,
        mode: Build,
    ) -> Result<Self, String> {
        let config = Arc::new(config);
        let (redis_fingerprint, redis) = match mode {
            Build::Serving => reuse.redis(&config, metrics)?.unzip(),
            Build::Offline => (None, None),
        };
        let auth = Authenticator::build(
            &config.auth,
            &config.routes,
            &reuse.key_stores,
            &reuse.auth,
            redis.clone().map(|r| r as Arc<dyn SharedTier>),
            generation,
            metrics,
        )?;
        let limiters = Limiters::build(
            &config.rate_limits,
            config.auth.failure_limit.as_ref(),
            &reuse.limiters,
            redis.clone().map(|r| r as Arc<dyn SharedTier>),
            metrics,
        );
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for spec in &config.upstreams {
            let resolve = match mode {
                Build::Serving => crate::upstream::Resolve::Dns,
                Build::Offline => crate::upstream::Resolve::Offline,
            };
            upstreams.push(Arc::new(UpstreamPool::build(
                spec.clone(),
                metrics,
                resolve,
            )?));
        }
        let routes = config
            .routes
            .iter()
            .map(|spec| {
                RoutePipeline::build(spec, &config, upstreams[spec.upstream].clone(), metrics)
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
            limiters,
            redis,
            redis_fingerprint,
            response_cache: reuse.response_cache(&config.response_cache),
            unmatched: metrics.route("unmatched"),
            assertion: config.upstream_assertion.clone().map(|spec| {
                crate::assertion::Signer::new(spec, config.auth.cache.max_entries as usize)
            }),
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
    pub reuse: Reusable,
    /// Requests between header read and logging; lets shutdown end as soon as they finish.
    pub in_flight: Arc<AtomicUsize>,
    /// Background work for new pools and key stores.
    background: UnboundedSender<Background>,
    /// The TLS listener's certificate, re-read on reload.
    pub tls_cert: Option<Arc<crate::tls::ReloadableCert>>,
}

impl Shared {
    /// `build` makes the first configuration version with the reusable parts it will share
    /// with later versions.
    pub fn new(
        build: impl FnOnce(&Metrics, &Reusable) -> Result<Snapshot, String>,
        metrics: Arc<Metrics>,
        background: UnboundedSender<Background>,
    ) -> Result<Self, String> {
        let reuse = Reusable::default();
        let snapshot = build(&metrics, &reuse)?;
        reuse.commit(&snapshot)?;
        let shared = Shared {
            generation: AtomicU64::new(snapshot.generation),
            current: ArcSwap::from_pointee(snapshot),
            metrics,
            reuse,
            in_flight: Arc::new(AtomicUsize::new(0)),
            background,
            tls_cert: None,
        };
        shared.start_background(&shared.snapshot());
        Ok(shared)
    }

    /// Sets the listener certificate (once, before serving).
    pub fn with_tls_cert(mut self, cert: Option<Arc<crate::tls::ReloadableCert>>) -> Self {
        self.tls_cert = cert;
        self
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Commits a new configuration version: its parts become the running ones, its
    /// background work starts, and it is swapped in; requests already running finish on the
    /// old one.
    pub fn install(&self, snapshot: Snapshot) -> Result<(), String> {
        self.reuse.commit(&snapshot)?;
        let snapshot = Arc::new(snapshot);
        self.start_background(&snapshot);
        self.current.store(snapshot);
        Ok(())
    }

    fn start_background(&self, snapshot: &Snapshot) {
        // The receiver lives as long as the server; if it is gone we are shutting down.
        for pool in &snapshot.upstreams {
            if pool.spec.health_check.is_some() {
                let _ = self
                    .background
                    .send(Background::HealthChecks(Arc::downgrade(pool)));
            }
        }
        for store in &snapshot.auth.new_stores {
            let _ = self
                .background
                .send(Background::JwksRefresh(Arc::downgrade(store)));
        }
    }
}
