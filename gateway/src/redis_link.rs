//! The process's connection to Redis: one multiplexed, auto-reconnecting connection, every
//! command bounded by `command_timeout`, failures counted per operation, and a short circuit
//! breaker so that while Redis is down requests fall back at once instead of each waiting for
//! a timeout. Callers treat `None` as "Redis had no answer" and fall back; nothing here ever
//! turns a Redis failure into an allow.

use crate::config::model::RedisSettings;
use crate::metrics::Metrics;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// After a failure, Redis is not asked again for this long.
const BREAKER_OPEN: Duration = Duration::from_secs(1);

/// What a Redis command was for: the `op` label of `authgate_redis_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisOp {
    RateLimit,
    CacheGet,
    CacheSet,
    Revoke,
    RevokeCheck,
    Publish,
    Subscribe,
    DpopReplay,
}

impl RedisOp {
    const ALL: [RedisOp; 8] = [
        RedisOp::RateLimit,
        RedisOp::CacheGet,
        RedisOp::CacheSet,
        RedisOp::Revoke,
        RedisOp::RevokeCheck,
        RedisOp::Publish,
        RedisOp::Subscribe,
        RedisOp::DpopReplay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RedisOp::RateLimit => "ratelimit",
            RedisOp::CacheGet => "cache_get",
            RedisOp::CacheSet => "cache_set",
            RedisOp::Revoke => "revoke",
            RedisOp::RevokeCheck => "revoke_check",
            RedisOp::Publish => "publish",
            RedisOp::Subscribe => "subscribe",
            RedisOp::DpopReplay => "dpop_replay",
        }
    }
}

/// A runtime that lives as long as the process, for the connection's background tasks; the
/// pingora worker runtimes only send commands through it.
fn redis_runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("authgate-redis")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the Redis runtime: {e}"))?;
    Ok(RT.get_or_init(|| rt))
}

/// Runs a task for as long as the process lives, beside the Redis connection.
pub fn spawn<F: Future<Output = ()> + Send + 'static>(task: F) -> Result<(), String> {
    redis_runtime()?.spawn(task);
    Ok(())
}

pub struct RedisLink {
    conn: ConnectionManager,
    pub client: redis::Client,
    pub prefix: String,
    timeout: Duration,
    epoch: Instant,
    /// One breaker per kind of command: a slow rate-limit script must not stop revocations.
    open_until_ms: [AtomicU64; 8],
    errors: [IntCounter; 8],
}

impl RedisLink {
    pub fn new(settings: &RedisSettings, metrics: &Metrics) -> Result<Arc<Self>, String> {
        let url = String::from_utf8_lossy(settings.url.expose()).into_owned();
        // The URL may carry a password: errors name the setting, not the value.
        // rediss:// builds its rustls configuration on the process's default provider.
        pingora_rustls::install_default_crypto_provider();
        let client = match &settings.ca {
            Some(ca) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.pem.clone()),
                },
            ),
            None => redis::Client::open(url),
        }
        .map_err(|e| format!("redis.url: {}", e.kind_str()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(settings.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2));
        let rt = redis_runtime()?;
        let _guard = rt.enter();
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("redis: {}", e.kind_str()))?;
        Ok(Arc::new(RedisLink {
            conn,
            client,
            prefix: settings.key_prefix.clone(),
            timeout: settings.command_timeout,
            epoch: Instant::now(),
            open_until_ms: Default::default(),
            errors: RedisOp::ALL
                .map(|op| metrics.redis_errors_total.with_label_values(&[op.as_str()])),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether Redis is worth asking right now for this kind of command.
    pub fn available(&self, op: RedisOp) -> bool {
        self.open_until_ms[op as usize].load(Ordering::Relaxed) <= self.now_ms()
    }

    /// Runs one command with the timeout and breaker; `None` when Redis did not answer.
    pub async fn run<T, F, Fut>(&self, op: RedisOp, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.available(op) {
            return None;
        }
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(op, e.kind_str());
                None
            }
            Err(_) => {
                self.failed(op, "timeout");
                None
            }
        }
    }

    /// Counts a failure seen outside `run` (the pub/sub connection).
    pub fn count_error(&self, op: RedisOp) {
        self.errors[op as usize].inc();
    }

    fn failed(&self, op: RedisOp, why: &str) {
        self.errors[op as usize].inc();
        let until = self.now_ms() + BREAKER_OPEN.as_millis() as u64;
        let was_closed =
            self.open_until_ms[op as usize].swap(until, Ordering::Relaxed) <= self.now_ms();
        if was_closed {
            tracing::warn!(
                op = op.as_str(),
                error = why,
                retry_in_ms = BREAKER_OPEN.as_millis() as u64,
                "redis unavailable; using in-process fallbacks"
            );
        }
    }

    /// `<prefix><kind>:<rest>`.
    pub fn key(&self, kind: &str, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + rest.len() + 1);
        k.push_str(&self.prefix);
        k.push_str(kind);
        k.push(':');
        k.push_str(rest);
        k
    }
}

/// A short name for an error, never its text (which might quote a URL).
trait KindStr {
    fn kind_str(&self) -> &'static str;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> &'static str {
        if self.is_timeout() {
            "timeout"
        } else if self.is_connection_refusal() {
            "connection refused"
        } else if self.is_io_error() || self.is_connection_dropped() {
            "connection error"
        } else {
            "command error"
        }
    }
}
