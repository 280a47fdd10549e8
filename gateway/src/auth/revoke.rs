//! Revocation: tokens (by hash), `jti`s and subjects refused from a point on, on this replica
//! at once and on every replica through Redis (keys for late joiners, pub/sub for the rest).

use super::cache::{TokenCache, TokenHash};
use super::Principal;
use crate::redis_link::{RedisLink, RedisOp};
use crate::tier::SharedTier;
use arc_swap::ArcSwapOption;
use moka::sync::Cache;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

/// How long a revocation is kept when the token's own expiry is unknown, until the
/// configuration says (`auth.revocation_ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_ENTRIES: u64 = 1_000_000;

/// How long a revocation of this identity must last: as long as the token could still be
/// accepted (its `exp` plus the provider's leeway), or `unknown` when it has no expiry.
pub fn ttl_for(p: &Principal, unknown: Duration) -> Duration {
    match p.valid_until {
        Some(until) => until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1)),
        None => unknown,
    }
}

pub use crate::tier::Revocation;

#[derive(Clone)]
struct Held {
    ttl: Duration,
    not_before_ms: u64,
}

struct HeldExpiry;

impl<K> moka::Expiry<K, Held> for HeldExpiry {
    fn expire_after_create(&self, _k: &K, v: &Held, _now: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _k: &K,
        v: &Held,
        _now: Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

fn held_cache<K: std::hash::Hash + Eq + Send + Sync + 'static>() -> Cache<K, Held> {
    Cache::builder()
        .max_capacity(MAX_ENTRIES)
        // LRU, not TinyLFU: a new revocation is always admitted (TinyLFU may refuse an entry
        // it has not seen often, which would silently let a revoked token through).
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .expire_after(HeldExpiry)
        .build()
}

pub struct Revocations {
    tokens: Cache<TokenHash, Held>,
    jtis: Cache<String, Held>,
    subjects: Cache<String, Held>,
    /// Set by the first revocation ever seen, so that until then a check costs one load.
    any: AtomicBool,
    /// The token cache in use, whose entries a revocation removes.
    cache: ArcSwapOption<TokenCache>,
    /// `auth.revocation_ttl` of the running configuration, in ms.
    default_ttl_ms: std::sync::atomic::AtomicU64,
    /// Revocations applied here that Redis has not confirmed yet, oldest first. Kept until it
    /// has (retried by [`retry_outbox`]), so a Redis outage never loses one.
    outbox: std::sync::Mutex<std::collections::VecDeque<Revocation>>,
    /// One flush at a time: the request that revoked and the retry task may both try.
    flushing: tokio::sync::Mutex<()>,
    /// The event listener subscribed now (0: none). While none is, revocations made on other
    /// replicas may be missed, so a locally cached identity is not trusted (see
    /// [`Revocations::events_current`]).
    listener: AtomicU64,
}

/// What the shared tier says about an identity just verified or read from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedCheck {
    Revoked,
    NotRevoked,
    /// Redis did not answer. The identity may pass (the Redis-down rule: what this replica
    /// knows is all it can enforce), but it is cached here only until Redis would be asked
    /// again ([`UNCHECKED_TTL`]): for as long as the entry lives, a revocation stored
    /// meanwhile (and never heard as an event) would otherwise be ignored.
    Unknown,
}

/// How long an identity whose revocation check went unanswered stays in the local cache: the
/// time a failing kind of Redis command is skipped before it is tried again. Long enough that
/// an outage does not send every request of a token back to its provider (an introspection
/// endpoint, say), short enough that a revocation is honoured about a second after Redis is
/// back.
pub const UNCHECKED_TTL: Duration = crate::redis_link::BREAKER_OPEN;

impl SharedCheck {
    /// The most a local copy of the identity may live, by what was found.
    pub fn local_ttl_cap(self) -> Duration {
        match self {
            SharedCheck::Unknown => UNCHECKED_TTL,
            SharedCheck::NotRevoked | SharedCheck::Revoked => Duration::MAX,
        }
    }
}

/// Listener ids: never 0, never reused.
static NEXT_LISTENER: AtomicU64 = AtomicU64::new(1);

/// How far a revocation has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Stored in Redis and published: every replica refuses it.
    All,
    /// Applied here; Redis has not confirmed yet and it will be retried until it does.
    Pending,
    /// There is no Redis: this replica only.
    ThisReplica,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    pub fn new() -> Self {
        Revocations {
            tokens: held_cache(),
            jtis: held_cache(),
            subjects: held_cache(),
            any: AtomicBool::new(false),
            cache: ArcSwapOption::empty(),
            default_ttl_ms: std::sync::atomic::AtomicU64::new(DEFAULT_TTL.as_millis() as u64),
            outbox: std::sync::Mutex::new(std::collections::VecDeque::new()),
            flushing: tokio::sync::Mutex::new(()),
            listener: AtomicU64::new(0),
        }
    }

    /// Whether this replica hears every revocation event now: a listener is subscribed, and
    /// the token cache was cleared when it subscribed (anything missed before is gone).
    pub fn events_current(&self) -> bool {
        self.listener.load(Ordering::Acquire) != 0
    }

    /// Listener `id` subscribed. The cache is cleared first, then the flag is set: a cached
    /// identity is never trusted on the strength of a gap.
    pub(crate) fn subscribed(&self, id: u64) {
        self.clear_cache();
        self.listener.store(id, Ordering::Release);
    }

    /// Listener `id` lost its subscription (a newer listener's, after a reload, is kept).
    pub(crate) fn unsubscribed(&self, id: u64) {
        let _ = self
            .listener
            .compare_exchange(id, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Revocations not yet confirmed by Redis.
    pub fn pending(&self) -> usize {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// `auth.revocation_ttl` of the configuration being installed.
    pub fn set_default_ttl(&self, ttl: Duration) {
        self.default_ttl_ms
            .store(ttl.as_millis() as u64, Ordering::Release);
    }

    /// How long a revocation without a known expiry lasts.
    pub fn default_ttl(&self) -> Duration {
        Duration::from_millis(self.default_ttl_ms.load(Ordering::Acquire))
    }

    pub fn use_cache(&self, cache: &Arc<TokenCache>) {
        self.cache.store(Some(cache.clone()));
    }

    fn clear_cache(&self) {
        if let Some(c) = self.cache.load_full() {
            c.clear();
        }
    }

    fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    pub fn token_revoked(&self, hash: &TokenHash) -> bool {
        self.any() && self.tokens.contains_key(hash)
    }

    /// Whether the identity is refused by a `jti` or subject revocation.
    pub fn principal_revoked(&self, p: &Principal) -> bool {
        if !self.any() {
            return false;
        }
        if p.jti.as_deref().is_some_and(|j| self.jtis.contains_key(j)) {
            return true;
        }
        match self.subjects.get(p.subject.as_str()) {
            Some(h) => issued_ms(p).is_none_or(|iat| iat < h.not_before_ms),
            None => false,
        }
    }

    /// Applies a revocation to this replica.
    pub fn apply(&self, r: &Revocation) {
        let held = |ttl_ms: u64, not_before_ms: u64| Held {
            ttl: Duration::from_millis(ttl_ms.max(1)),
            not_before_ms,
        };
        match r {
            Revocation::Token { id, ttl_ms } => {
                let Some(hash) = hex::decode(id)
                    .ok()
                    .and_then(|b| <TokenHash>::try_from(b).ok())
                else {
                    return;
                };
                self.tokens.insert(hash, held(*ttl_ms, 0));
                if let Some(c) = self.cache.load_full() {
                    c.invalidate(&hash);
                }
            }
            Revocation::Jti { id, ttl_ms } => self.jtis.insert(id.clone(), held(*ttl_ms, 0)),
            Revocation::Subject {
                id,
                not_before_ms,
                ttl_ms,
            } => self
                .subjects
                .insert(id.clone(), held(*ttl_ms, *not_before_ms)),
        }
        self.any.store(true, Ordering::Release);
    }

    /// Applies locally at once, then stores in Redis with its TTL and tells the other
    /// replicas; while Redis does not answer it waits in the outbox and is retried.
    pub async fn revoke(&self, r: Revocation, shared: Option<&dyn SharedTier>) -> Reach {
        self.apply(&r);
        let Some(shared) = shared else {
            return Reach::ThisReplica;
        };
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(r);
        if self.flush(shared).await {
            Reach::All
        } else {
            Reach::Pending
        }
    }

    /// Sends the outbox to Redis, oldest first; `true` once it is empty. Stops at the first
    /// revocation Redis does not confirm (order is kept: nothing is skipped).
    pub async fn flush(&self, shared: &dyn SharedTier) -> bool {
        let _one = self.flushing.lock().await;
        loop {
            let next = self
                .outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .front()
                .cloned();
            let Some(r) = next else { return true };
            if shared.revoke(&r).await.is_none() {
                return false;
            }
            self.outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
        }
    }

    /// For an identity not from the local cache: whether another replica revoked it before
    /// this one was listening. One round trip.
    pub async fn revoked_in_shared(
        &self,
        shared: &dyn SharedTier,
        hash: &TokenHash,
        p: &Principal,
    ) -> SharedCheck {
        let Some(found) = shared.revocations(hash, p.jti.as_deref(), &p.subject).await else {
            return SharedCheck::Unknown;
        };
        let (token_revoked, jti_revoked, subject_nbf) =
            (found.token, found.jti, found.subject_not_before_ms);
        // Local copies of what the shared tier holds: as long as the token could pass, at least.
        let ttl_ms = ttl_for(p, self.default_ttl()).as_millis() as u64;
        if token_revoked {
            self.apply(&Revocation::Token {
                id: hex::encode(hash),
                ttl_ms,
            });
        }
        // Kept here too: a later check that Redis cannot answer must not let it through.
        if let (true, Some(jti)) = (jti_revoked, p.jti.as_ref()) {
            self.apply(&Revocation::Jti {
                id: jti.clone(),
                ttl_ms,
            });
        }
        let subject_revoked =
            subject_nbf.is_some_and(|nbf| issued_ms(p).is_none_or(|iat| iat < nbf));
        if let Some(nbf) = subject_nbf {
            self.apply(&Revocation::Subject {
                id: p.subject.clone(),
                not_before_ms: nbf,
                ttl_ms: self.default_ttl().as_millis() as u64,
            });
        }
        if token_revoked || jti_revoked || subject_revoked {
            SharedCheck::Revoked
        } else {
            SharedCheck::NotRevoked
        }
    }

    pub fn subject_now(subject: &str, ttl: Duration) -> Revocation {
        Revocation::Subject {
            id: subject.to_string(),
            not_before_ms: now_ms(),
            ttl_ms: ttl.as_millis() as u64,
        }
    }
}

fn issued_ms(p: &Principal) -> Option<u64> {
    p.issued_at
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

/// Retries the outbox while it holds revocations Redis has not confirmed, for as long as the
/// link lives.
pub async fn retry_outbox(link: Weak<RedisLink>, revocations: Weak<Revocations>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (Some(l), Some(r)) = (link.upgrade(), revocations.upgrade()) else {
            return;
        };
        if r.pending() > 0 && r.flush(&*l).await {
            tracing::info!("pending revocations stored in Redis and published");
        }
    }
}

/// How often the subscription is pinged, and how long a ping, a connection or a `SUBSCRIBE`
/// may take: a connection that a NAT or a failover silently dropped, or a node that accepts
/// and never answers, is noticed within about this.
const LIVENESS: Duration = Duration::from_secs(2);

/// Why the listener is not subscribed (logged once per gap, never with a secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    NoNode,
    Connect,
    ConnectTimedOut,
    Subscribe,
    SubscribeTimedOut,
    Ended,
    PingUnanswered,
}

impl Gap {
    fn as_str(self) -> &'static str {
        match self {
            Gap::NoNode => "no node to subscribe on",
            Gap::Connect => "cannot connect",
            Gap::ConnectTimedOut => "connecting went unanswered",
            Gap::Subscribe => "SUBSCRIBE failed",
            Gap::SubscribeTimedOut => "SUBSCRIBE went unanswered",
            Gap::Ended => "the connection closed",
            Gap::PingUnanswered => "the subscription stopped answering",
        }
    }
}

/// Opens the subscription on `client`'s node, each step bounded by `within`. Unbounded, a
/// node that accepts connections and never answers (a stopped process, a paused VM) would
/// hold the listener for good: it would never move to the master a failover promotes, and
/// revocations made there would never reach this replica's token cache.
async fn subscribe(
    client: &redis::Client,
    channel: &str,
    within: Duration,
) -> Result<redis::aio::PubSub, Gap> {
    let mut pubsub = match tokio::time::timeout(within, client.get_async_pubsub()).await {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(Gap::Connect),
        Err(_) => return Err(Gap::ConnectTimedOut),
    };
    match tokio::time::timeout(within, pubsub.subscribe(channel)).await {
        Ok(Ok(())) => Ok(pubsub),
        Ok(Err(_)) => Err(Gap::Subscribe),
        Err(_) => Err(Gap::SubscribeTimedOut),
    }
}

/// Listens on `<prefix>events` and applies what other replicas revoke, reconnecting as
/// needed. The subscription is pinged every [`LIVENESS`]; a ping that fails or goes
/// unanswered ends it. Each subscription starts by clearing the local token cache (events may
/// have been missed before it), and while there is none the local cache is not trusted
/// ([`Revocations::events_current`]): every identity is checked with Redis instead.
pub async fn listen(link: Weak<RedisLink>, revocations: Weak<Revocations>) {
    use futures_util::StreamExt;
    let id = NEXT_LISTENER.fetch_add(1, Ordering::Relaxed);
    let mut first = true;
    // The gap being waited out, if any: logged when it starts, not on every retry.
    let mut gap: Option<Gap> = None;
    loop {
        let Some(l) = link.upgrade() else { return };
        let channel = format!("{}events", l.prefix);
        let client = l.pubsub_client();
        drop(l);
        let node = client
            .as_ref()
            .map(|c| c.get_connection_info().addr().to_string());
        let subscribed = match &client {
            Some(c) => subscribe(c, &channel, LIVENESS).await,
            None => Err(Gap::NoNode),
        };
        let ended = match subscribed {
            Ok(pubsub) => {
                let Some(r) = revocations.upgrade() else {
                    return;
                };
                // Cleared on every subscription, the first included: what was cached before
                // it (at start-up, or under a previous link) was not covered by events.
                r.subscribed(id);
                drop(r);
                tracing::info!(
                    node = node.as_deref().unwrap_or("-"),
                    "revocation events: subscribed"
                );
                gap = None;
                let (mut sink, mut stream) = pubsub.split();
                let mut ping = tokio::time::interval(LIVENESS);
                ping.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => {
                            let Some(msg) = msg else { break Gap::Ended };
                            let Some(r) = revocations.upgrade() else {
                                return;
                            };
                            match serde_json::from_slice::<Revocation>(msg.get_payload_bytes()) {
                                Ok(event) => r.apply(&event),
                                Err(_) => tracing::warn!("ignoring a malformed revocation event"),
                            }
                        }
                        _ = ping.tick() => {
                            // A reload replaced the link: its own listener takes over.
                            if link.strong_count() == 0 {
                                if let Some(r) = revocations.upgrade() {
                                    r.unsubscribed(id);
                                }
                                return;
                            }
                            let alive = tokio::time::timeout(LIVENESS, sink.ping::<redis::Value>()).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                break Gap::PingUnanswered;
                            }
                        }
                    }
                }
            }
            Err(why) => why,
        };
        if let Some(r) = revocations.upgrade() {
            r.unsubscribed(id);
        }
        // At start-up a sentinel follower may not have found the master yet: no gap to report.
        let starting = first && ended == Gap::NoNode;
        if !starting {
            if let Some(l) = link.upgrade() {
                l.count_error(RedisOp::Subscribe);
            }
        }
        if gap.is_none() && !starting {
            tracing::warn!(
                node = node.as_deref().unwrap_or("-"),
                reason = ended.as_str(),
                "revocation events: not subscribed; retrying (meanwhile identities are checked with Redis, not the local cache)"
            );
        }
        gap = Some(ended);
        first = false;
        tokio::time::sleep(LIVENESS / 2).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that accepts connections and never answers (what a stopped redis-server or a
    /// paused VM looks like from here) holds each connection it accepts.
    async fn frozen_node() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                open.push(s);
            }
        });
        (addr, held)
    }

    #[tokio::test]
    async fn subscribing_on_a_node_that_never_answers_gives_up_in_time() {
        let (addr, held) = frozen_node().await;
        let client = redis::Client::open(format!("redis://{addr}")).expect("url");
        let within = Duration::from_millis(200);
        let started = Instant::now();
        // The outer bound only keeps a regression from hanging the test run.
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            subscribe(&client, "p:events", within),
        )
        .await
        .expect("subscribe() must bound its own wait");
        let gap = r
            .err()
            .expect("a node that never answers is no subscription");
        assert!(
            matches!(gap, Gap::ConnectTimedOut | Gap::SubscribeTimedOut),
            "{gap:?}"
        );
        // Connecting and subscribing are bounded separately: at most two waits.
        assert!(started.elapsed() < within * 3, "{:?}", started.elapsed());
        held.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_gap_at_once() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
        let r = subscribe(&client, "p:events", Duration::from_secs(5)).await;
        assert_eq!(r.err(), Some(Gap::Connect));
    }
}
