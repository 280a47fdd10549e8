//! Rate limiting: named policies, each a GCRA bucket per key, in-process (`local`) or shared
//! by every replica through Redis (`shared`, falling back to local when Redis does not answer).
//! A route may list several policies; all must pass.

pub mod lease;
pub mod local;

use crate::auth::Principal;
use crate::config::model::{LimitKey, RatePolicy};
use crate::config::raw::LimitScope;
use crate::metrics::Metrics;
use crate::tier::{Bucket, SharedTier};
use http::HeaderMap;
use local::LocalLimiter;
use prometheus::{IntCounter, IntGauge};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// One bucket's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed {
        remaining: u32,
        reset: Duration,
    },
    Limited {
        retry_after: Duration,
        reset: Duration,
    },
}

/// A policy's buckets. Kept across reloads while the policy is unchanged.
pub struct PolicyLimiter {
    pub policy: Arc<RatePolicy>,
    local: LocalLimiter,
    /// Tokens reserved from the shared bucket (shared policies only).
    leases: Option<lease::Leases>,
    keys_gauge: IntGauge,
    fallbacks: IntCounter,
}

impl PolicyLimiter {
    fn same_policy(&self, p: &RatePolicy) -> bool {
        let a = &self.policy;
        a.rate == p.rate && a.burst == p.burst && a.key == p.key && a.scope == p.scope
    }

    /// Prunes idle keys and publishes the key count.
    pub fn maintain(&self) {
        self.local.prune();
        if let Some(l) = &self.leases {
            l.prune();
        }
        self.keys_gauge.set(self.local.keys() as i64);
    }

    pub fn keys(&self) -> usize {
        self.local.keys()
    }
}

/// Keys of one shared policy that may hold a reservation at once; past it, keys ask Redis for
/// one token at a time until idle ones go.
const MAX_LEASED_KEYS: u64 = 1_000_000;

/// Policy limiters outlive configuration versions, so a reload does not hand out fresh buckets.
pub struct LimiterRegistry {
    by_name: Mutex<HashMap<String, Arc<PolicyLimiter>>>,
    /// Addresses blocked by `auth.failure_limit`; bounded, each entry expiring with its block.
    blocked: Arc<moka::sync::Cache<u64, Blocked>>,
}

impl Default for LimiterRegistry {
    fn default() -> Self {
        LimiterRegistry {
            by_name: Mutex::default(),
            blocked: Arc::new(
                moka::sync::Cache::builder()
                    .max_capacity(1_000_000)
                    .expire_after(BlockedExpiry)
                    .build(),
            ),
        }
    }
}

impl LimiterRegistry {
    /// The running limiter of an unchanged policy (its buckets survive the reload), else a new
    /// one; the registry changes only in [`LimiterRegistry::commit`].
    fn find_or_new(&self, policy: &Arc<RatePolicy>, metrics: &Metrics) -> Arc<PolicyLimiter> {
        let map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = map.get(&*policy.name) {
            if existing.same_policy(policy) {
                return existing.clone();
            }
        }
        Arc::new(PolicyLimiter {
            policy: policy.clone(),
            local: LocalLimiter::new(policy).counting_overflow(
                metrics
                    .rate_limit_overflow_total
                    .with_label_values(&[&policy.name]),
            ),
            leases: (policy.scope == LimitScope::Shared)
                .then(|| lease::Leases::new(MAX_LEASED_KEYS)),
            keys_gauge: metrics.rate_limit_keys.with_label_values(&[&policy.name]),
            fallbacks: metrics
                .rate_limit_fallbacks_total
                .with_label_values(&[&policy.name]),
        })
    }

    /// Makes an installed version's limiters the running ones.
    pub fn commit(&self, in_use: &[Arc<PolicyLimiter>]) {
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        *map = in_use
            .iter()
            .map(|l| (l.policy.name.to_string(), l.clone()))
            .collect();
    }
}

/// A shared policy's bucket for one key's `name` (`policy:kind:value`).
fn bucket<'a>(policy: &RatePolicy, name: &'a str) -> Bucket<'a> {
    Bucket {
        name,
        interval: policy.rate.interval(),
        burst: policy.burst,
    }
}

/// The limiters of one configuration version.
pub struct Limiters {
    pub policies: Vec<Arc<PolicyLimiter>>,
    shared: Option<Arc<dyn SharedTier>>,
    /// `auth.failure_limit`, when configured.
    pub failures: Option<FailureLimiter>,
}

/// `auth.failure_limit`: refused credentials per client address. The bucket (governor) is
/// spent by each refusal; once it is empty the address is blocked until a token refills, and
/// while blocked its credentials are answered 429 before any verification, introspection or
/// Redis lookup. Checking a block costs a map lookup and spends nothing.
pub struct FailureLimiter {
    limiter: Arc<PolicyLimiter>,
    blocked: Arc<moka::sync::Cache<u64, Blocked>>,
}

#[derive(Clone, Copy)]
struct Blocked {
    until: std::time::Instant,
    reset: Duration,
}

struct BlockedExpiry;

impl moka::Expiry<u64, Blocked> for BlockedExpiry {
    fn expire_after_create(
        &self,
        _k: &u64,
        v: &Blocked,
        now: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.until.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _k: &u64,
        v: &Blocked,
        now: std::time::Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.until.saturating_duration_since(now))
    }
}

impl FailureLimiter {
    fn key(ip: Option<IpAddr>) -> u64 {
        hash_key("ip", &KeyValue::Ip(ip))
    }

    /// The 429's state while `ip` has spent its budget.
    pub fn blocked(&self, ip: Option<IpAddr>) -> Option<RateLimitInfo> {
        let b = self.blocked.get(&Self::key(ip))?;
        let left = b.until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        Some(info(&self.limiter.policy, 0, b.reset.max(left), left))
    }

    /// Spends one for a refused credential from `ip`; blocks it once the bucket is empty.
    pub fn failed(&self, ip: Option<IpAddr>) {
        let key = Self::key(ip);
        let interval = self.limiter.policy.rate.interval();
        let wait = match self.limiter.local.check(key) {
            Verdict::Allowed {
                remaining: 0,
                reset,
            } => Some((interval, reset)),
            Verdict::Allowed { .. } => None,
            Verdict::Limited { retry_after, reset } => Some((retry_after, reset)),
        };
        if let Some((wait, reset)) = wait {
            self.blocked.insert(
                key,
                Blocked {
                    until: std::time::Instant::now() + wait,
                    reset,
                },
            );
        }
    }
}

/// The address a client is limited as: IPv4 as it is, IPv6 as its `prefix` (a host usually
/// holds a whole /64; per-address buckets would let it pick a fresh one per request).
pub fn limit_address(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, ipv6_prefix.min(128))
            .map_or(IpAddr::V6(v6), |n| IpAddr::V6(n.network())),
        v4 => v4,
    }
}

/// A policy's state after a request: what the `RateLimit-*` headers and a 429 report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// The policy's index in the configuration (`rate_limits`), to order header items.
    pub index: usize,
    pub policy: Arc<str>,
    pub limit: u32,
    /// `limit` as the header value the policy prebuilt (a reference count, no formatting).
    pub limit_header: http::HeaderValue,
    pub remaining: u32,
    pub reset_s: u64,
    pub retry_after_s: u64,
}

/// One policy's state as `explain` reports it.
#[derive(Debug, Clone)]
pub struct Peek {
    pub policy: Arc<str>,
    pub limit: u32,
    pub remaining: u32,
    /// `ip`, `sub`, `key` or `header`: what the bucket was chosen by.
    pub keyed_by: &'static str,
    /// Read from Redis (a shared policy with Redis answering).
    pub shared: bool,
}

/// What the request is limited by, for one policy.
pub struct RequestKeys<'a> {
    /// Already reduced to its limiting prefix (see [`limit_address`]).
    pub client_ip: Option<IpAddr>,
    pub principal: Option<&'a Principal>,
    pub headers: &'a HeaderMap,
}

/// Every policy of a route passed (with the tightest one's state for the response headers),
/// or the first that did not.
pub type LimitResult = Result<Option<RateLimitInfo>, (usize, RateLimitInfo)>;

static HASHER: LazyLock<std::collections::hash_map::RandomState> = LazyLock::new(Default::default);

impl Limiters {
    pub fn build(
        policies: &[Arc<RatePolicy>],
        failure_limit: Option<&Arc<RatePolicy>>,
        registry: &LimiterRegistry,
        shared: Option<Arc<dyn SharedTier>>,
        metrics: &Metrics,
    ) -> Self {
        Limiters {
            policies: policies
                .iter()
                .map(|p| registry.find_or_new(p, metrics))
                .collect(),
            shared,
            failures: failure_limit.map(|p| FailureLimiter {
                limiter: registry.find_or_new(p, metrics),
                blocked: registry.blocked.clone(),
            }),
        }
    }

    /// Every limiter the registry keeps for this version, the failure limiter included.
    pub fn all(&self) -> Vec<Arc<PolicyLimiter>> {
        let mut all = self.policies.clone();
        if let Some(f) = &self.failures {
            all.push(f.limiter.clone());
        }
        all
    }

    /// Checks the route's policies in order. `route_policies` are indices into `policies`.
    /// Each policy's state is also pushed to `seen`, for the per-policy `RateLimit` header.
    pub async fn check(
        &self,
        route_policies: &[usize],
        keys: &RequestKeys<'_>,
        seen: &mut Vec<RateLimitInfo>,
    ) -> LimitResult {
        let mut tightest: Option<RateLimitInfo> = None;
        for (pos, &i) in route_policies.iter().enumerate() {
            let limiter = &self.policies[i];
            let policy = &limiter.policy;
            let (kind, value) = key_of(&policy.key, keys);
            let key = hash_key(kind, &value);
            let verdict = match (policy.scope, &self.shared, &limiter.leases) {
                (LimitScope::Shared, Some(shared), Some(leases)) => {
                    match leases.spend(key, Instant::now()) {
                        Some(v) => v,
                        None => {
                            let name = format!("{}:{kind}:{value}", policy.name);
                            let bucket = bucket(policy, &name);
                            let asked = Instant::now();
                            match shared.reserve(bucket, leases.want()).await {
                                Some(g) => {
                                    leases.granted(key, g, bucket.interval, asked, Instant::now())
                                }
                                None => {
                                    limiter.fallbacks.inc();
                                    limiter.local.check(key)
                                }
                            }
                        }
                    }
                }
                _ => limiter.local.check(key),
            };
            match verdict {
                Verdict::Allowed { remaining, reset } => {
                    let info = info(policy, remaining, reset, Duration::ZERO);
                    seen.push(info.clone());
                    if tightest
                        .as_ref()
                        .is_none_or(|t| info.remaining < t.remaining)
                    {
                        tightest = Some(info);
                    }
                }
                Verdict::Limited { retry_after, reset } => {
                    let info = info(policy, 0, reset, retry_after);
                    seen.push(info.clone());
                    return Err((pos, info));
                }
            }
        }
        Ok(tightest)
    }

    /// What each of the route's policies has left for these keys, spending nothing (for
    /// `POST /admin/explain`). A shared policy is read from Redis, or locally when Redis does
    /// not answer, as a check would fall back.
    pub async fn peek(&self, route_policies: &[usize], keys: &RequestKeys<'_>) -> Vec<Peek> {
        let mut out = Vec::with_capacity(route_policies.len());
        for &i in route_policies {
            let limiter = &self.policies[i];
            let policy = &limiter.policy;
            let (kind, value) = key_of(&policy.key, keys);
            let shared = match (policy.scope, &self.shared) {
                (LimitScope::Shared, Some(shared)) => {
                    let name = format!("{}:{kind}:{value}", policy.name);
                    shared.peek(bucket(policy, &name)).await
                }
                _ => None,
            };
            let key = hash_key(kind, &value);
            // Tokens this replica holds are the bucket's too, already taken from Redis.
            let held = limiter
                .leases
                .as_ref()
                .map_or(0, |l| l.held(key, Instant::now()));
            out.push(Peek {
                policy: policy.name.clone(),
                limit: policy.burst,
                remaining: shared.map_or_else(
                    || limiter.local.peek(key),
                    |r| r.saturating_add(held).min(policy.burst),
                ),
                keyed_by: kind,
                shared: shared.is_some(),
            });
        }
        out
    }

    pub fn maintain(&self) {
        for l in &self.policies {
            l.maintain();
        }
        if let Some(f) = &self.failures {
            f.limiter.maintain();
        }
    }
}

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-11) for a route's policies, in
/// order: `"name";q=<burst>;w=<seconds to refill a full burst>`. `None` without policies.
pub fn policy_header<'a>(
    policies: impl Iterator<Item = &'a RatePolicy>,
) -> Option<http::HeaderValue> {
    let items: Vec<String> = policies
        .map(|p| {
            let window = ceil_secs(p.rate.interval().saturating_mul(p.burst)).max(1);
            format!("\"{}\";q={};w={window}", p.name, p.burst)
        })
        .collect();
    if items.is_empty() {
        return None;
    }
    http::HeaderValue::from_str(&items.join(", ")).ok()
}

/// `RateLimit` for the policies a request was checked against, in the route's order:
/// `"name";r=<remaining>;t=<seconds until full>`.
pub fn state_header(route_order: &[usize], states: &[RateLimitInfo]) -> Option<http::HeaderValue> {
    // Built for every answer of a limited route: bytes and itoa, where `write!` cost most of it.
    let mut out = Vec::with_capacity(64);
    let mut n = itoa::Buffer::new();
    for &i in route_order {
        if let Some(s) = states.iter().find(|s| s.index == i) {
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.push(b'"');
            out.extend_from_slice(s.policy.as_bytes());
            out.extend_from_slice(b"\";r=");
            out.extend_from_slice(n.format(s.remaining).as_bytes());
            out.extend_from_slice(b";t=");
            out.extend_from_slice(n.format(s.reset_s).as_bytes());
        }
    }
    (!out.is_empty())
        .then(|| http::HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok())
        .flatten()
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

fn info(
    policy: &RatePolicy,
    remaining: u32,
    reset: Duration,
    retry_after: Duration,
) -> RateLimitInfo {
    RateLimitInfo {
        index: policy.index,
        policy: policy.name.clone(),
        limit: policy.burst,
        limit_header: policy.limit_header.clone(),
        remaining,
        reset_s: ceil_secs(reset),
        retry_after_s: ceil_secs(retry_after).max(if retry_after.is_zero() { 0 } else { 1 }),
    }
}

/// What a bucket is keyed by, without allocating for the common cases.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyValue<'a> {
    Ip(Option<IpAddr>),
    Str(&'a str),
    /// The first 128 bits of a header value's SHA-256.
    Digest([u8; 16]),
}

impl std::fmt::Display for KeyValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::Ip(Some(ip)) => write!(f, "{ip}"),
            KeyValue::Ip(None) => f.write_str("unknown"),
            KeyValue::Str(s) => f.write_str(s),
            KeyValue::Digest(d) => f.write_str(&hex::encode(d)),
        }
    }
}

/// The bucket a request falls into. Subject and API-key policies fall back to the client IP
/// for requests without that identity (DRF's anonymous tier). Header values are hashed: they
/// may be credentials, and never go to Redis as they are.
fn key_of<'a>(key: &LimitKey, k: &'a RequestKeys<'_>) -> (&'static str, KeyValue<'a>) {
    let ip = ("ip", KeyValue::Ip(k.client_ip));
    match key {
        LimitKey::ClientIp => ip,
        LimitKey::Subject => match k.principal {
            Some(p) => ("sub", KeyValue::Str(p.subject.as_str())),
            None => ip,
        },
        LimitKey::ApiKey => match k.principal.and_then(|p| p.credential_id.as_deref()) {
            Some(id) => ("key", KeyValue::Str(id)),
            None => ip,
        },
        LimitKey::Header(name) => match k.headers.get(name) {
            Some(v) => {
                let mut d = [0u8; 16];
                d.copy_from_slice(&Sha256::digest(v.as_bytes())[..16]);
                ("hdr", KeyValue::Digest(d))
            }
            None => ip,
        },
    }
}

fn hash_key(kind: &str, value: &KeyValue<'_>) -> u64 {
    let mut h = HASHER.build_hasher();
    kind.hash(&mut h);
    match value {
        KeyValue::Ip(ip) => ip.hash(&mut h),
        KeyValue::Str(s) => s.hash(&mut h),
        KeyValue::Digest(d) => d.hash(&mut h),
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_11_fields_list_each_policy_in_the_routes_order() {
        let policy = |index: usize, name: &str, rate: &str, burst: u32| RatePolicy {
            index,
            name: name.into(),
            rate: rate.parse().expect("rate"),
            burst,
            key: LimitKey::ClientIp,
            scope: LimitScope::Local,
            limit_header: http::HeaderValue::from(burst),
        };
        let (ip, user) = (policy(0, "ip", "10/s", 20), policy(1, "user", "100/m", 50));
        let header = policy_header([&user, &ip].into_iter()).expect("header");
        // 50 at 100/m refill in 30 s; 20 at 10/s in 2 s.
        assert_eq!(header, r#""user";q=50;w=30, "ip";q=20;w=2"#);
        assert_eq!(policy_header(std::iter::empty()), None);
        let states = [
            info(&ip, 19, Duration::from_millis(100), Duration::ZERO),
            info(&user, 49, Duration::from_millis(600), Duration::ZERO),
        ];
        let state = state_header(&[1, 0], &states).expect("state");
        assert_eq!(state, r#""user";r=49;t=1, "ip";r=19;t=1"#);
        // A refusal before the second policy was checked lists what was checked.
        assert_eq!(
            state_header(&[1, 0], &states[..1]).expect("state"),
            r#""ip";r=19;t=1"#
        );
        assert_eq!(state_header(&[1, 0], &[]), None);
    }

    #[test]
    fn ipv6_clients_are_limited_per_prefix_and_mapped_ipv4_as_ipv4() {
        let a = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(limit_address(a("2001:db8::1"), 64), a("2001:db8::"));
        assert_eq!(limit_address(a("2001:db8::ffff:1"), 64), a("2001:db8::"));
        assert_ne!(limit_address(a("2001:db8:0:1::1"), 64), a("2001:db8::"));
        assert_eq!(limit_address(a("2001:db8::1"), 128), a("2001:db8::1"));
        assert_eq!(limit_address(a("::ffff:10.1.2.3"), 64), a("10.1.2.3"));
        assert_eq!(limit_address(a("10.1.2.3"), 64), a("10.1.2.3"));
        let trusted =
            crate::config::model::TrustedProxies(vec!["10.0.0.0/8".parse().expect("net")]);
        assert!(trusted.contains(&a("::ffff:10.0.0.7")));
    }

    fn principal(sub: &str) -> Principal {
        Principal::for_tests(sub, &[])
    }

    #[test]
    fn keys_fall_back_to_the_client_ip() {
        let headers = HeaderMap::new();
        let p = principal("42");
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let anon = RequestKeys {
            client_ip: Some(ip),
            principal: None,
            headers: &headers,
        };
        let user = RequestKeys {
            client_ip: Some(ip),
            principal: Some(&p),
            headers: &headers,
        };
        assert_eq!(
            key_of(&LimitKey::Subject, &user),
            ("sub", KeyValue::Str("42"))
        );
        assert_eq!(
            key_of(&LimitKey::Subject, &anon),
            ("ip", KeyValue::Ip(Some(ip)))
        );
        assert_eq!(
            key_of(&LimitKey::ApiKey, &user),
            ("ip", KeyValue::Ip(Some(ip)))
        );
        assert_eq!(key_of(&LimitKey::ClientIp, &anon).1.to_string(), "10.1.2.3");
        let name = http::HeaderName::from_static("x-tenant");
        assert_eq!(key_of(&LimitKey::Header(name.clone()), &anon).0, "ip");
        let mut h = HeaderMap::new();
        h.insert(name.clone(), "secret-tenant-token".parse().expect("value"));
        let with = RequestKeys {
            client_ip: Some(ip),
            principal: None,
            headers: &h,
        };
        let (kind, value) = key_of(&LimitKey::Header(name), &with);
        assert_eq!(kind, "hdr");
        assert!(
            !value.to_string().contains("secret"),
            "header values are hashed"
        );
        assert_eq!(value.to_string().len(), 32);
    }

    #[test]
    fn headers_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }

    /// Replicas of one shared policy, each its own process (registry), one shared tier.
    #[tokio::test]
    async fn replicas_share_one_bucket_and_fall_back_to_their_own_when_the_tier_goes() {
        use crate::tier::memory::MemoryTier;
        let tier = MemoryTier::new(Arc::new(crate::clock::ManualClock::default()));
        let policy = Arc::new(RatePolicy {
            index: 0,
            name: "shared5".into(),
            rate: "1/m".parse().expect("rate"),
            burst: 5,
            key: LimitKey::ClientIp,
            scope: LimitScope::Shared,
            limit_header: http::HeaderValue::from(5u32),
        });
        let metrics = Metrics::new();
        let replica = || {
            Limiters::build(
                std::slice::from_ref(&policy),
                None,
                &LimiterRegistry::default(),
                Some(tier.clone() as Arc<dyn SharedTier>),
                &metrics,
            )
        };
        let replicas = [replica(), replica(), replica()];
        let headers = HeaderMap::new();
        let keys = RequestKeys {
            client_ip: Some("192.0.2.9".parse().expect("ip")),
            principal: None,
            headers: &headers,
        };
        let mut allowed = 0;
        for i in 0..12 {
            let mut seen = Vec::new();
            if replicas[i % 3].check(&[0], &keys, &mut seen).await.is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 5, "the burst across all replicas, not per replica");
        let peek = replicas[0].peek(&[0], &keys).await;
        assert_eq!((peek[0].remaining, peek[0].shared), (0, true));

        // The tier goes: each replica limits alone, and says so.
        tier.set_down(true);
        let mut seen = Vec::new();
        assert!(replicas[1].check(&[0], &keys, &mut seen).await.is_ok());
        assert_eq!(replicas[1].policies[0].fallbacks.get(), 1);
        let peek = replicas[2].peek(&[0], &keys).await;
        assert!(
            !peek[0].shared,
            "read locally while the tier does not answer"
        );
    }
}
