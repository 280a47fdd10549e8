//! Process wiring: the pingora server, its services, signals and graceful shutdown.

use crate::admin::Admin;
use crate::auth::jwks::run_refresh;
use crate::config::{env::ProcessEnv, Source};
use crate::metrics::Metrics;
use crate::proxy::gateway::Gateway;
use crate::proxy::head_timeout::HeadTimeout;
use crate::reload::Reloader;
use crate::snapshot::{Background, Shared, Snapshot};
use crate::tls::ReloadableCert;
use crate::upstream::run_health_checks;
use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Loads the configuration and serves until a shutdown signal. Returns only on a start-up
/// failure; a clean shutdown exits the process with status 0.
pub fn run(source: Source) -> Result<(), String> {
    let config = crate::config::load(&source, &ProcessEnv)
        .map_err(|e| format!("invalid configuration {}: {e}", source.describe()))?;
    crate::config::log_warnings(&config);
    let metrics = Arc::new(Metrics::new());
    let server_settings = &config.server;
    let conf = ServerConf {
        threads: server_settings.threads,
        // One single-threaded runtime per worker: no cross-thread task stealing on the hot
        // path (measured cheaper per request for a proxy; see the bench notes).
        work_stealing: false,
        grace_period_seconds: Some(server_settings.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 512,
        ..ServerConf::default()
    };
    let listen = server_settings.listen.clone();
    let tls = server_settings.tls.clone();
    let tls_cert = match &tls {
        Some(t) => Some(Arc::new(ReloadableCert::load(&t.cert_file, &t.key_file)?)),
        None => None,
    };
    let admin_listen = config.admin.listen.clone();
    let grace = server_settings.grace_period;
    let h2_streams = server_settings.h2_max_concurrent_streams;

    let (health_tx, health_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(
        Shared::new(
            |metrics, reuse| {
                let snapshot = Snapshot::build(config, 1, metrics, reuse)?;
                snapshot.load_new_key_sets();
                Ok(snapshot)
            },
            metrics,
            health_tx,
        )?
        .with_tls_cert(tls_cert.clone()),
    );
    let reloader = Arc::new(Reloader::new(source, shared.clone()));

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut http = pingora_proxy::http_proxy(&server.configuration, Gateway::new(shared.clone()));
    // pingora's bounded defaults (64 KiB of decoded headers), with the configured stream limit.
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(h2_streams);
    http.h2_options = Some(h2);
    // Every head is rewritten with canonical names anyway (README: header names), so parsing
    // need not keep a case-preserving second map per request (PATCHES.md, patch 2).
    let mut server_options = pingora_core::apps::HttpServerOptions::default();
    server_options.discard_header_case = true;
    http.server_options = Some(server_options);
    let mut proxy = Service::new(
        "authgate proxy".to_string(),
        HeadTimeout::new(http, shared.clone()),
    );
    for addr in &listen {
        proxy.add_tcp(addr);
    }
    if let (Some(t), Some(cert)) = (&tls, tls_cert) {
        // A resolver instead of file paths, so a reload can swap in a renewed certificate.
        let mut settings =
            TlsSettings::intermediate("", "").map_err(|e| format!("server.tls: {e}"))?;
        settings.set_cert_resolver(cert);
        settings.enable_h2();
        proxy.add_tls_with_settings(&t.listen, None, settings);
    }
    server.add_service(proxy);

    let mut admin = Service::new(
        "authgate admin".to_string(),
        Admin::new(shared.clone(), reloader.clone()),
    );
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);
    server.add_service(admin);

    server.add_service(background_service(
        "authgate supervisor",
        Supervisor {
            health_rx: Mutex::new(Some(health_rx)),
            reloader,
            shared: shared.clone(),
        },
    ));

    tracing::info!(listen = ?listen, admin = %admin_listen, "authgate starting");
    // From here on no proxy thread writes to stderr itself.
    crate::logging::start_writer(shared.metrics.log_lines_dropped_total.clone())?;
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingShutdown { shared, grace }),
    });
    crate::logging::flush(Duration::from_secs(1));
    std::process::exit(0)
}

/// Background work: starts health checks for new upstream pools and reloads on SIGHUP.
struct Supervisor {
    health_rx: Mutex<Option<UnboundedReceiver<Background>>>,
    reloader: Arc<Reloader>,
    shared: Arc<Shared>,
}

/// How often idle limiter keys are pruned and the key gauges refreshed.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(10);

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let rx = self
            .health_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut rx) = rx else { return };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload only via /admin/reload");
                None
            }
        };
        let mut maintenance = tokio::time::interval(MAINTENANCE_EVERY);
        loop {
            tokio::select! {
                _ = maintenance.tick() => {
                    let snapshot = self.shared.snapshot();
                    // Pruning walks every key; keep it off this runtime's timers.
                    let _ = tokio::task::spawn_blocking(move || snapshot.limiters.maintain()).await;
                }
                task = rx.recv() => match task {
                    Some(Background::HealthChecks(pool)) => { tokio::spawn(run_health_checks(pool, shutdown.clone())); }
                    Some(Background::JwksRefresh(store)) => { tokio::spawn(run_refresh(store, shutdown.clone())); }
                    None => return,
                },
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    tracing::info!("SIGHUP received, reloading configuration");
                    let reloader = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// pingora's signal handling, except that a graceful stop (SIGTERM) ends as soon as the
/// requests in flight have finished instead of always sleeping the whole grace period.
struct DrainingShutdown {
    shared: Arc<Shared>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingShutdown {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!(grace_period_s = self.grace.as_secs(), "SIGTERM: no new connections; finishing requests in flight");
                watch_drain(self.shared.in_flight.clone(), self.grace);
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
        }
    }
}

/// Exits once nothing is in flight (checked from a plain thread: the runtimes are winding
/// down). pingora's own grace-period timer remains the upper bound.
fn watch_drain(in_flight: Arc<std::sync::atomic::AtomicUsize>, grace: Duration) {
    std::thread::spawn(move || {
        // Let pingora stop its accept loops and finish requests whose headers are being read.
        std::thread::sleep(Duration::from_millis(200));
        let deadline = std::time::Instant::now() + grace;
        let mut idle_checks = 0;
        while std::time::Instant::now() < deadline {
            if in_flight.load(Ordering::Acquire) == 0 {
                idle_checks += 1;
                if idle_checks >= 3 {
                    tracing::info!("all requests finished; exiting");
                    crate::logging::flush(Duration::from_secs(1));
                    std::process::exit(0);
                }
            } else {
                idle_checks = 0;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}
