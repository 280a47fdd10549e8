//! The process's connection to Redis (one server, a Sentinel-followed master, or a cluster):
//! multiplexed connections that reconnect by themselves, every command bounded by
//! `command_timeout`, failures counted per operation, and a short circuit
//! breaker so that while Redis is down requests fall back at once instead of each waiting for
//! a timeout. Callers treat `None` as "Redis had no answer" and fall back; nothing here ever
//! turns a Redis failure into an allow.

mod conn;
mod gcra;
mod sentinel;
mod tier;

pub use conn::Conn;

use crate::config::model::{NodeAddr, RedisSettings, RedisTopology, Secret};
use crate::metrics::Metrics;
use crate::tls::CaBundle;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsMode};
use sentinel::Follower;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// After a failure, Redis is not asked again for this long.
pub const BREAKER_OPEN: Duration = Duration::from_secs(1);

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
    backend: Backend,
    pub prefix: String,
    timeout: Duration,
    epoch: Instant,
    /// One breaker per kind of command: a slow rate-limit script must not stop revocations.
    open_until_ms: [AtomicU64; 8],
    errors: [IntCounter; 8],
}

/// How commands reach Redis in each topology.
enum Backend {
    Server {
        conn: ConnectionManager,
        client: redis::Client,
    },
    Sentinel(Arc<Follower>),
    Cluster {
        conn: ClusterConnection,
        /// One client per seed node, for the event subscription (a cluster forwards every
        /// `PUBLISH` to all its nodes, so any node will do); tried in turn.
        seeds: Vec<redis::Client>,
        next_seed: AtomicUsize,
    },
}

/// How long a new connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisLink {
    pub fn new(settings: &RedisSettings, metrics: &Metrics) -> Result<Arc<Self>, String> {
        // rediss:// builds its rustls configuration on the process's default provider.
        pingora_rustls::install_default_crypto_provider();
        let rt = redis_runtime()?;
        let _guard = rt.enter();
        let backend = match &settings.topology {
            RedisTopology::Single { url } => Backend::server(settings, url)?,
            RedisTopology::Sentinel {
                master,
                nodes,
                password,
            } => {
                // No response timeout of its own: each command's is `command_timeout`, and a
                // connection that stops answering is found by the follower's ping.
                let follower = Follower::new(
                    sentinel_client(settings, master, nodes, password.as_ref())?,
                    AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(None),
                );
                rt.spawn(Follower::follow(Arc::downgrade(&follower)));
                Backend::Sentinel(follower)
            }
            RedisTopology::Cluster { nodes } => Backend::cluster(settings, nodes)?,
        };
        Ok(Arc::new(RedisLink {
            backend,
            prefix: settings.key_prefix.clone(),
            timeout: settings.command_timeout,
            epoch: Instant::now(),
            open_until_ms: Default::default(),
            errors: RedisOp::ALL
                .map(|op| metrics.redis_errors_total.with_label_values(&[op.as_str()])),
        }))
    }

    /// Whether keys may live on different nodes: then no command may name two keys.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// A client for the event subscription, on the node it should use now; `None` while a
    /// sentinel-followed master is unknown.
    pub fn pubsub_client(&self) -> Option<redis::Client> {
        match &self.backend {
            Backend::Server { client, .. } => Some(client.clone()),
            Backend::Sentinel(f) => f.current().map(|m| m.client.clone()),
            Backend::Cluster {
                seeds, next_seed, ..
            } => {
                let i = next_seed.fetch_add(1, Ordering::Relaxed);
                seeds.get(i % seeds.len().max(1)).cloned()
            }
        }
    }

    /// A connection to use now (and, with Sentinel, the master it goes to); with Sentinel,
    /// waits for a master while none is known.
    async fn conn(&self) -> Option<(Conn, Option<Arc<sentinel::Master>>)> {
        match &self.backend {
            Backend::Server { conn, .. } => Some((Conn::Server(conn.clone()), None)),
            Backend::Sentinel(f) => {
                let m = f.master().await?;
                Some((Conn::Master(m.conn.clone()), Some(m)))
            }
            Backend::Cluster { conn, .. } => Some((Conn::Cluster(conn.clone()), None)),
        }
    }

    /// What a failed command on `used` tells the sentinel follower.
    fn saw_failure(&self, used: Option<&Arc<sentinel::Master>>, e: Option<&redis::RedisError>) {
        let (Backend::Sentinel(f), Some(used)) = (&self.backend, used) else {
            return;
        };
        match e {
            Some(e)
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error()
                    || e.code() == Some("READONLY") =>
            {
                f.lost(used)
            }
            _ => f.doubt(),
        }
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
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.available(op) {
            return None;
        }
        // Finding the connection counts against the timeout too (a master being looked for).
        let used = std::sync::Mutex::new(None);
        let attempt = async {
            match self.conn().await {
                Some((conn, master)) => {
                    *used.lock().unwrap_or_else(|p| p.into_inner()) = master;
                    f(conn).await.map_err(Some)
                }
                None => Err(None),
            }
        };
        let outcome = tokio::time::timeout(self.timeout, attempt).await;
        let used = used.into_inner().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(Ok(v)) => Some(v),
            Ok(Err(Some(e))) => {
                self.saw_failure(used.as_ref(), Some(&e));
                self.failed(op, e.kind_str());
                None
            }
            Ok(Err(None)) => {
                self.failed(op, "no master known");
                None
            }
            Err(_) => {
                self.saw_failure(used.as_ref(), None);
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

impl Backend {
    fn server(settings: &RedisSettings, url: &Secret) -> Result<Self, String> {
        // The URL may carry a password: errors name the setting, not the value.
        let url = String::from_utf8_lossy(url.expose()).into_owned();
        let mut info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("redis.url: {}", e.kind_str()))?;
        info = with_credentials(info, settings);
        let client = match &settings.ca {
            Some(ca) => redis::Client::build_with_tls(info, certificates(ca)),
            None => redis::Client::open(info),
        }
        .map_err(|e| format!("redis.url: {}", e.kind_str()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(settings.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("redis: {}", e.kind_str()))?;
        Ok(Backend::Server { conn, client })
    }

    fn cluster(settings: &RedisSettings, nodes: &[NodeAddr]) -> Result<Self, String> {
        let infos = nodes
            .iter()
            .map(|n| {
                Ok(with_credentials(
                    node_addr(n, settings.tls).into_connection_info()?,
                    settings,
                ))
            })
            .collect::<redis::RedisResult<Vec<ConnectionInfo>>>()
            .map_err(|e| format!("redis.cluster.nodes: {}", e.kind_str()))?;
        let mut builder = ClusterClientBuilder::new(infos.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(settings.command_timeout);
        if let Some(u) = &settings.username {
            builder = builder.username(u);
        }
        if let Some(p) = &settings.password {
            builder = builder.password(String::from_utf8_lossy(p.expose()));
        }
        if settings.tls {
            builder = builder.tls(TlsMode::Secure);
        }
        if let Some(ca) = &settings.ca {
            builder = builder.certs(certificates(ca));
        }
        let client = builder
            .build()
            .map_err(|e| format!("redis.cluster: {}", e.kind_str()))?;
        // Connects in the background: a cluster that is down at start-up is not an error.
        let conn = client.get_pending_async_connection_with_config(ClusterConfig::new());
        let seeds = infos
            .into_iter()
            .map(|i| match &settings.ca {
                Some(ca) => redis::Client::build_with_tls(i, certificates(ca)),
                None => redis::Client::open(i),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("redis.cluster.nodes: {}", e.kind_str()))?;
        Ok(Backend::Cluster {
            conn,
            seeds,
            next_seed: AtomicUsize::new(0),
        })
    }
}

fn sentinel_client(
    settings: &RedisSettings,
    master: &str,
    nodes: &[NodeAddr],
    sentinel_password: Option<&Secret>,
) -> Result<SentinelClient, String> {
    let err = |e: redis::RedisError| format!("redis.sentinel: {}", e.kind_str());
    let mut b = SentinelClientBuilder::new(
        nodes.iter().map(|n| node_addr(n, settings.tls)),
        master,
        SentinelServerType::Master,
    )
    .map_err(err)?;
    if let Some(u) = &settings.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &settings.password {
        b = b.set_client_to_redis_password(String::from_utf8_lossy(p.expose()));
    }
    if let Some(p) = sentinel_password {
        b = b.set_client_to_sentinel_password(String::from_utf8_lossy(p.expose()));
    }
    if settings.tls {
        b = b
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
    }
    if let Some(ca) = &settings.ca {
        b = b
            .set_client_to_redis_certificates(certificates(ca))
            .set_client_to_sentinel_certificates(certificates(ca));
    }
    b.build().map_err(err)
}

fn node_addr(n: &NodeAddr, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: n.host.clone(),
            port: n.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(n.host.clone(), n.port)
    }
}

/// The configured ACL user and password, over whatever a URL carried.
fn with_credentials(info: ConnectionInfo, settings: &RedisSettings) -> ConnectionInfo {
    let mut redis = info.redis_settings().clone();
    if let Some(u) = &settings.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &settings.password {
        redis = redis.set_password(String::from_utf8_lossy(p.expose()));
    }
    info.set_redis_settings(redis)
}

fn certificates(ca: &CaBundle) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.pem.clone()),
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
