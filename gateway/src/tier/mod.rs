//! The shared tier: what replicas share (cached decisions, revocations, limit buckets, DPoP
//! proof ids), as one narrow interface. The gateway's is Redis (`redis_link`); unit tests use
//! [`memory::MemoryTier`], which can be shared by several "replicas" in one test and made to
//! fail, so the provider chain, the token cache and revocation can be tested across replicas
//! without a server.
//!
//! Keys here are the domain's (a token's hash, a `jti`, a subject, a limiter's name); the
//! implementation decides how they are spelled (Redis: the configured prefix). Every method
//! answers `None` when the tier could not answer; callers fall back, never to an allow.

use crate::auth::cache::TokenHash;
use crate::auth::revoke::Revocation;
use crate::ratelimit::lease::Grant;
use async_trait::async_trait;
use std::time::Duration;

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
