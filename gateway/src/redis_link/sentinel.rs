//! Following a Sentinel-monitored master. The redis crate's `SentinelClient` finds the master
//! (asking each sentinel, then checking `ROLE` on the node it names); a multiplexed connection
//! to that node serves every command. A task here keeps that connection pointing at the
//! current master: it asks the sentinels every [`RECHECK`] (a master that was failed over
//! while still reachable is left at once) and at once when a command saw the connection
//! break or the node answer `READONLY` (a demoted master), and it pings the connection it
//! keeps, so one that died silently (a dropped NAT entry) is replaced within a recheck. While
//! no master is known a command waits for one within its `command_timeout`; after that the
//! callers' Redis-down rules apply. Sentinels that cannot be reached while the master still
//! answers leave the connection in use: a rolling restart of the sentinels is no outage.

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::sentinel::SentinelClient;
use redis::AsyncConnectionConfig;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// How often the sentinels are asked who the master is while all seems well.
const RECHECK: Duration = Duration::from_secs(1);
/// While there is no master connection, how soon to try again.
const RETRY: Duration = Duration::from_millis(250);

/// The current master: its address (to notice a change) and the connection to it.
pub struct Master {
    pub addr: String,
    pub conn: MultiplexedConnection,
    pub client: redis::Client,
}

pub struct Follower {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: ArcSwapOption<Master>,
    /// Bumped whenever a master is found, for commands waiting for one.
    found: tokio::sync::watch::Sender<u64>,
    recheck: Notify,
    config: AsyncConnectionConfig,
}

impl Follower {
    pub fn new(sentinel: SentinelClient, config: AsyncConnectionConfig) -> Arc<Self> {
        Arc::new(Follower {
            sentinel: tokio::sync::Mutex::new(sentinel),
            current: ArcSwapOption::empty(),
            found: tokio::sync::watch::Sender::new(0),
            recheck: Notify::new(),
            config,
        })
    }

    pub fn current(&self) -> Option<Arc<Master>> {
        self.current.load_full()
    }

    /// The current master, or the next one found (the caller bounds the wait): at start-up
    /// and after a failover, a command waits for the follower rather than failing at once.
    pub async fn master(&self) -> Option<Arc<Master>> {
        let mut found = self.found.subscribe();
        loop {
            if let Some(m) = self.current() {
                return Some(m);
            }
            found.changed().await.ok()?;
        }
    }

    /// A command on `used` saw the connection break or a replica's answer: drop that
    /// connection (unless the follower already replaced it) and ask again now.
    pub fn lost(&self, used: &Arc<Master>) {
        let current = self.current.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, used)) {
            self.current.compare_and_swap(&*current, None);
        }
        self.recheck.notify_one();
    }

    /// A command went unanswered: the master may be gone; ask the sentinels now.
    pub fn doubt(&self) {
        self.recheck.notify_one();
    }

    /// Keeps `current` on the master the sentinels name, for as long as the link lives.
    pub async fn follow(this: Weak<Self>) {
        loop {
            let Some(f) = this.upgrade() else { return };
            let wait = match f.resolve().await {
                Ok(()) => RECHECK,
                Err(why) => {
                    if f.current.swap(None).is_some() {
                        tracing::warn!(
                            error = why,
                            "redis sentinel: master lost; using in-process fallbacks"
                        );
                    }
                    RETRY
                }
            };
            // A notification that arrived while resolving is kept by `Notify` (one permit).
            // The link is held for at most `wait` here, so dropping it ends this task soon.
            tokio::select! {
                _ = f.recheck.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn resolve(&self) -> Result<(), &'static str> {
        let named = {
            let mut s = self.sentinel.lock().await;
            s.async_get_client().await
        };
        let current = self.current.load_full();
        let client = match named {
            Ok(client) => client,
            // No sentinel answers: keep a master that still does.
            Err(_) => {
                return match &current {
                    Some(m) if alive(m).await => Ok(()),
                    _ => Err("no sentinel names a reachable master"),
                };
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        if let Some(m) = &current {
            if m.addr == addr && alive(m).await {
                return Ok(());
            }
        }
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|_| "cannot connect to the master the sentinels name")?;
        let previous = self.current.swap(Some(Arc::new(Master {
            addr: addr.clone(),
            conn,
            client,
        })));
        self.found.send_modify(|n| *n += 1);
        match previous {
            Some(p) if p.addr != addr => {
                tracing::warn!(from = %p.addr, to = %addr, "redis sentinel: following the new master")
            }
            Some(_) => tracing::warn!(master = %addr, "redis sentinel: reconnected to the master"),
            None => tracing::info!(master = %addr, "redis sentinel: connected to the master"),
        }
        Ok(())
    }
}

/// How long the kept connection may take to answer a ping.
const PING: Duration = Duration::from_secs(1);

/// Whether the kept connection still answers.
async fn alive(m: &Master) -> bool {
    let mut conn = m.conn.clone();
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(&mut conn);
    matches!(tokio::time::timeout(PING, ping).await, Ok(Ok(_)))
}
