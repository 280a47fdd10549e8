//! Process setup for serving: logging, the listener, the ready line, signals.

use std::{io::Write as _, sync::Arc};

use axum::serve::ListenerExt as _;
use tracing_subscriber::EnvFilter;

use crate::{app, cli::ServeArgs};

pub fn run(args: ServeArgs) -> Result<(), String> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(serve(args))
}

/// Logs are human-readable lines on stderr (stdout carries only the ready line);
/// level from `RUST_LOG`, default `info`.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let state = Arc::new(app::AppState::new(&args)?);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("reading the bound address: {e}"))?;
    tracing::info!(
        %addr,
        name = %state.name,
        products = state.catalog.len(),
        users = state.users.iter().count(),
        "upstream-mock ready"
    );
    // The one stdout line test harnesses wait for; it carries the real port when
    // --listen asked for port 0.
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "upstream-mock listening on {addr}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing the ready line: {e}"))?;
    }
    // Small JSON answers must not wait for Nagle/delayed-ACK: benchmarks go through it.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "setting TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app::router(state));
    // A mock has nothing to save: on SIGTERM/SIGINT it stops at once instead of
    // waiting for open streams and WebSockets, which would stall test teardown.
    tokio::select! {
        result = server => result.map_err(|e| format!("serving: {e}")),
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
