//! Configuration reload (SIGHUP and `POST /admin/reload`): the new file is read, validated and
//! built off the request path, then swapped in whole. A bad file changes nothing.

use crate::config::{self, env::ProcessEnv, Source};
use crate::snapshot::{Shared, Snapshot};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied { generation: u64 },
    Rejected { reason: String },
}

pub struct Reloader {
    source: Source,
    shared: Arc<Shared>,
    /// Reloads are serialised so two in a row cannot interleave their builds.
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(source: Source, shared: Arc<Shared>) -> Self {
        Reloader {
            source,
            shared,
            lock: Mutex::new(()),
        }
    }

    pub fn reload(&self) -> ReloadOutcome {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = self.try_reload();
        let result = match &outcome {
            ReloadOutcome::Applied { generation } => {
                tracing::info!(generation, source = %self.source.describe(), "configuration reloaded");
                "ok"
            }
            ReloadOutcome::Rejected { reason } => {
                tracing::error!(%reason, source = %self.source.describe(), "configuration reload refused; the previous configuration stays in force");
                "error"
            }
        };
        self.shared
            .metrics
            .config_reloads_total
            .with_label_values(&[result])
            .inc();
        outcome
    }

    fn try_reload(&self) -> ReloadOutcome {
        let config = match config::load(&self.source, &ProcessEnv) {
            Ok(c) => c,
            Err(e) => {
                return ReloadOutcome::Rejected {
                    reason: e.to_string(),
                }
            }
        };
        config::log_warnings(&config);
        let old = self.shared.snapshot();
        for warning in restart_only_changes(&old.config, &config) {
            tracing::warn!(
                setting = warning,
                "changed setting takes effect only after a restart"
            );
        }
        // Everything is prepared to the side first: a renewed certificate (same or new file
        // names), the new version and its new parts. Only then is anything committed.
        let certificate = match (&self.shared.tls_cert, &config.server.tls) {
            (Some(_), Some(tls)) => {
                match crate::tls::ReloadableCert::prepare(&tls.cert_file, &tls.key_file) {
                    Ok(c) => Some(c),
                    Err(reason) => return ReloadOutcome::Rejected { reason },
                }
            }
            _ => None,
        };
        let generation = self.shared.next_generation();
        let snapshot =
            match Snapshot::build(config, generation, &self.shared.metrics, &self.shared.reuse) {
                Ok(s) => s,
                Err(reason) => return ReloadOutcome::Rejected { reason },
            };
        snapshot.load_new_key_sets();
        if let Err(reason) = self.shared.install(snapshot) {
            return ReloadOutcome::Rejected { reason };
        }
        if let (Some(cert), Some(prepared)) = (&self.shared.tls_cert, certificate) {
            cert.commit(prepared);
        }
        ReloadOutcome::Applied { generation }
    }
}

/// Settings bound at start (sockets, threads) that a reload cannot change.
fn restart_only_changes(old: &config::Config, new: &config::Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.server.listen != new.server.listen {
        out.push("server.listen");
    }
    if old.server.threads != new.server.threads {
        out.push("server.threads");
    }
    if old.server.tls.as_ref().map(|t| &t.listen) != new.server.tls.as_ref().map(|t| &t.listen) {
        out.push("server.tls.listen");
    }
    if old.admin.listen != new.admin.listen {
        out.push("admin.listen");
    }
    if old.server.grace_period != new.server.grace_period {
        out.push("server.grace_period");
    }
    if old.server.h2_max_concurrent_streams != new.server.h2_max_concurrent_streams {
        out.push("server.http2.max_concurrent_streams");
    }
    out
}
