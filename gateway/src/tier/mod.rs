//! The shared tier: what replicas share (cached decisions, revocations, limit buckets, DPoP
//! proof ids), as one narrow interface. The gateway's is Redis (`redis_link`); unit tests use
//! [`memory::MemoryTier`], which can be shared by several "replicas" in one test and made to
//! fail, so the provider chain, the token cache and revocation can be tested across replicas
//! without a server.
//!
//! The types here are the tier's vocabulary, so it depends on nothing else in the crate; auth
//! and ratelimit re-export them. Keys are the domain's (a token's hash, a `jti`, a subject, a
//! limiter's name); the implementation decides how they are spelled (Redis: the configured
//! prefix). Every method answers `None` when the tier could not answer; callers fall back,
//! never to an allow.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The kinds of key the tier keeps (the contract's Redis key names after the prefix), named
/// once so what is written and what is read back cannot drift apart.
pub mod kind {
    /// A cached decision, by the token's hash.
    pub const CACHED: &str = "tok";
    /// A revoked token (by hash) or `jti`.
    pub const REVOKED: &str = "revoked";
    /// A subject's not-before time.
    pub const REVOKED_SUBJECT: &str = "revoked-subject";
    /// A limiter's bucket (GCRA state).
    pub const BUCKET: &str = "rl";
    /// A DPoP proof's `jti`, seen once.
    pub const DPOP_PROOF: &str = "dpop";
}

/// Lowercase-hex-able SHA-256 of a presented token: the only form a token is kept in.
pub type TokenHash = [u8; 32];

/// One revocation, as published on the events channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// Lowercase hex SHA-256 of the token.
    Token {
        id: String,
        ttl_ms: u64,
    },
    Jti {
        id: String,
        ttl_ms: u64,
    },
    /// Tokens of the subject issued before `not_before_ms` (Unix ms) are refused.
    Subject {
        id: String,
        not_before_ms: u64,
        ttl_ms: u64,
    },
}

/// How a revocation is kept in the tier: one record per revocation, whatever the store.
pub struct StoredRevocation<'a> {
    /// [`kind::REVOKED`] (a token's hash or a `jti`) or [`kind::REVOKED_SUBJECT`].
    pub kind: &'static str,
    pub id: &'a str,
    /// `1`, or a subject's not-before time (ms since the epoch).
    pub value: String,
    pub ttl: Duration,
}

impl Revocation {
    pub fn stored(&self) -> StoredRevocation<'_> {
        let (kind, id, value, ttl_ms) = match self {
            Revocation::Token { id, ttl_ms } | Revocation::Jti { id, ttl_ms } => {
                (kind::REVOKED, id, "1".to_string(), *ttl_ms)
            }
            Revocation::Subject {
                id,
                not_before_ms,
                ttl_ms,
            } => (
                kind::REVOKED_SUBJECT,
                id,
                not_before_ms.to_string(),
                *ttl_ms,
            ),
        };
        StoredRevocation {
            kind,
            id,
            value,
            ttl: Duration::from_millis(ttl_ms.max(1)),
        }
    }
}

/// Below this many tokens left in the bucket, each request takes one token from Redis.
pub const BATCH_FROM: u32 = 40;

/// What Redis granted: `granted` tokens (0: limited), valid for `valid` from when it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u32,
    /// Left in the bucket after the grant.
    pub remaining: u32,
    pub retry_after: Duration,
    /// Until the bucket is full again; a reservation is void from then.
    pub reset: Duration,
}

#[cfg(test)]
pub mod memory;

/// What the tier holds against one identity (see [`SharedTier::revocations`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revoked {
    /// The token itself (by hash).
    pub token: bool,
    /// Its `jti`.
    pub jti: bool,
    /// Its subject, for tokens issued before this time (ms since the epoch).
    pub subject_not_before_ms: Option<u64>,
}

/// A limiter's bucket: `policy:kind:value`, the name its replicas share.
#[derive(Debug, Clone, Copy)]
pub struct Bucket<'a> {
    pub name: &'a str,
    /// Emission interval (one token per).
    pub interval: Duration,
    pub burst: u32,
}

#[async_trait]
pub trait SharedTier: Send + Sync {
    /// A cached decision (as stored by `cache`) and how long its entry has left.
    async fn cached(&self, token: &TokenHash) -> Option<(Vec<u8>, Duration)>;

    /// Stores a decision for `ttl`. Best effort: a lost write costs a verification later.
    async fn cache(&self, token: &TokenHash, value: Vec<u8>, ttl: Duration);

    /// Stores a revocation for its TTL, drops the token's cached decision, and tells the
    /// other replicas, in that order. `None`: not confirmed (the caller keeps it to retry).
    async fn revoke(&self, r: &Revocation) -> Option<()>;

    /// What is stored against a token's hash, its `jti` and its subject, in one round trip.
    async fn revocations(
        &self,
        token: &TokenHash,
        jti: Option<&str>,
        subject: &str,
    ) -> Option<Revoked>;

    /// Up to `want` tokens of the bucket (GCRA, on the tier's clock).
    async fn reserve(&self, bucket: Bucket<'_>, want: u32) -> Option<Grant>;

    /// What the bucket allows now, spending nothing.
    async fn peek(&self, bucket: Bucket<'_>) -> Option<u32>;

    /// Records a DPoP proof's `jti` for `ttl`: `Some(true)` the first time it is seen.
    async fn first_use(&self, jti: &str, ttl: Duration) -> Option<bool>;
}
