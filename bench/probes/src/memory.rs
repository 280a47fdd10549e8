//! Resident memory per entry of authgate's in-process state, through its public API:
//! the local rate limiter (`authgate::ratelimit::local::LocalLimiter`) with N distinct keys,
//! and the tier-1 token cache (`authgate::auth::cache::TokenCache`) with N cached identities.
//!
//! RSS comes from `/proc/self/status` (VmRSS) before and after filling; each measurement runs
//! in a fresh child process so one cannot reuse memory freed by the other. The allocator is
//! mimalloc, as in the `authgate` binary.
//!
//! ```text
//! authgate-memory                      # both, default sizes (1,000,000 keys; 100,000 tokens)
//! authgate-memory limiter [KEYS]       # one line: "limiter entries=... bytes_per_entry=..."
//! authgate-memory tokens [ENTRIES]     # one line: "tokens entries=... bytes_per_entry=..."
//! authgate-memory principals [N]       # the same identities in a plain Vec, without the cache
//! ```

use authgate::auth::cache::{Entry, TokenCache};
use authgate::auth::Principal;
use authgate::config::model::{LimitKey, RatePolicy, TokenCacheSettings};
use authgate::config::raw::LimitScope;
use authgate::config::units::Rate;
use authgate::metrics::Metrics;
use authgate::ratelimit::local::LocalLimiter;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[global_allocator]
static GLOBAL: authgate_alloc::MiMalloc = authgate_alloc::MiMalloc;

const DEFAULT_KEYS: u64 = 1_000_000;
const DEFAULT_TOKENS: u64 = 100_000;

/// Resident set size in bytes (VmRSS of /proc/self/status, in KiB there).
fn rss_bytes() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no VmRSS in /proc/self/status".to_string())
}

/// splitmix64: distinct, well-spread 64-bit keys, like the hashes the gateway uses.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn report(what: &str, entries: u64, before: u64, after: u64, took: Duration, extra: &str) {
    let delta = after.saturating_sub(before);
    let per = if entries == 0 {
        0.0
    } else {
        delta as f64 / entries as f64
    };
    println!(
        "{what} entries={entries} rss_before={before} rss_after={after} rss_delta={delta} bytes_per_entry={per:.1} fill_ms={}{extra}",
        took.as_millis()
    );
}

fn limiter(n: u64) -> Result<(), String> {
    // The contract's `user` policy: 1000/day, burst 50, keyed by subject.
    let policy = RatePolicy {
        index: 0,
        name: "user".into(),
        rate: "1000/day".parse::<Rate>()?,
        burst: 50,
        key: LimitKey::Subject,
        scope: LimitScope::Local,
        limit_header: 50u32.into(),
    };
    let before = rss_bytes()?;
    let started = Instant::now();
    let limiter = LocalLimiter::new(&policy);
    for i in 0..n {
        std::hint::black_box(limiter.check(mix(i)));
    }
    let took = started.elapsed();
    let after = rss_bytes()?;
    let keys = limiter.keys() as u64;
    if keys < n {
        eprintln!("note: the limiter holds {keys} keys of {n} (its key cap)");
    }
    report("limiter", keys, before, after, took, "");
    Ok(())
}

/// What one cached identity looks like: a simplejwt access token's numeric user id, two
/// scopes, a uuid4-hex jti.
fn principal(i: u64, provider: &Arc<str>, now: SystemTime) -> Principal {
    Principal {
        subject: format!("{}", 100_000 + i),
        scopes: authgate::auth::scope_set(vec!["read".to_string(), "write".to_string()]),
        provider: provider.clone(),
        expires_at: Some(now + Duration::from_secs(900)),
        valid_until: Some(now + Duration::from_secs(930)),
        credential_id: None,
        jti: Some(format!("{:016x}{:016x}", mix(i), mix(!i))),
        issued_at: Some(now),
        jkt: None,
        claims: None,
    }
}

fn token_hash(i: u64) -> [u8; 32] {
    let mut hash = [0u8; 32];
    for (k, chunk) in hash.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(i.wrapping_mul(4).wrapping_add(k as u64)).to_le_bytes());
    }
    hash
}

/// The identities alone, in a plain Vec: the part of a cached token that is not the cache's.
fn principals(n: u64) -> Result<(), String> {
    let provider: Arc<str> = Arc::from("lms-jwt");
    let now = SystemTime::now();
    let before = rss_bytes()?;
    let started = Instant::now();
    let held: Vec<([u8; 32], Entry)> = (0..n)
        .map(|i| {
            (
                token_hash(i),
                Entry::Valid(Arc::new(principal(i, &provider, now))),
            )
        })
        .collect();
    let took = started.elapsed();
    let after = rss_bytes()?;
    std::hint::black_box(&held);
    report("principals", held.len() as u64, before, after, took, "");
    Ok(())
}

fn tokens(n: u64) -> Result<(), String> {
    let settings = TokenCacheSettings {
        max_entries: n.max(1),
        max_ttl: Duration::from_secs(300),
        negative_ttl: Duration::from_secs(5),
    };
    let provider: Arc<str> = Arc::from("lms-jwt");
    let now = SystemTime::now();
    let metrics = Metrics::new();
    let before = rss_bytes()?;
    let started = Instant::now();
    let cache = TokenCache::new(&settings, &metrics);
    for i in 0..n {
        cache.put_local(
            token_hash(i),
            Entry::Valid(Arc::new(principal(i, &provider, now))),
            [0; 16],
        );
    }
    let held = cache.len();
    let took = started.elapsed();
    let after = rss_bytes()?;
    if held < n {
        eprintln!("note: the token cache holds {held} entries of {n}");
    }
    let sizes = format!(
        " entry_size={} principal_size={}",
        std::mem::size_of::<Entry>(),
        std::mem::size_of::<Principal>()
    );
    report("tokens", held, before, after, took, &sizes);
    Ok(())
}

fn count(arg: Option<String>, default: u64) -> Result<u64, String> {
    match arg {
        None => Ok(default),
        Some(s) => s
            .replace('_', "")
            .parse()
            .map_err(|e| format!("bad count {s}: {e}")),
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("limiter") => limiter(count(args.next(), DEFAULT_KEYS)?),
        Some("tokens") => tokens(count(args.next(), DEFAULT_TOKENS)?),
        Some("principals") => principals(count(args.next(), DEFAULT_TOKENS)?),
        None => {
            // Each in its own process, so neither sees memory the other freed.
            let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            for what in ["limiter", "tokens", "principals"] {
                let status = Command::new(&me)
                    .arg(what)
                    .status()
                    .map_err(|e| format!("cannot run {what}: {e}"))?;
                if !status.success() {
                    return Err(format!("{what} failed: {status}"));
                }
            }
            Ok(())
        }
        Some(other) => Err(format!(
            "unknown mode {other}; usage: authgate-memory [limiter [KEYS] | tokens [ENTRIES] | principals [N]]"
        )),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authgate-memory: {e}");
            ExitCode::FAILURE
        }
    }
}
