//! An in-memory store of opaque tokens, like django-rest-knox: 64 hex characters,
//! a fixed expiry, revocable, and readable through RFC 7662 introspection.

use std::{collections::HashMap, sync::Mutex};

use sha2::{Digest, Sha256};

/// Scopes of tokens issued by `/api/auth/login/`.
pub const LOGIN_SCOPE: &str = "read write";
/// The `client_id` reported for tokens issued by the login endpoint.
pub const LOGIN_CLIENT_ID: &str = "lms-web";

/// What the store knows about one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueToken {
    pub sub: String,
    pub username: Option<String>,
    pub scope: String,
    pub client_id: String,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    /// Introspection answers without `sub` (an IdP that only names the user), for tests.
    pub omit_sub: bool,
    /// More members of the introspection answer (roles, a tenant), for tests.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl OpaqueToken {
    pub fn exp(&self) -> u64 {
        self.expires_at_ms / 1000
    }

    pub fn iat(&self) -> u64 {
        self.issued_at_ms / 1000
    }
}

/// Purging expired entries is done on insert, every this many inserts, so that a
/// benchmark logging in millions of times does not grow the map forever.
const PURGE_EVERY: u64 = 4096;

#[derive(Default)]
pub struct KnoxStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, OpaqueToken>,
    inserts: u64,
}

impl KnoxStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent (every
        // update is a single insert/remove), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `entry` under a fresh random token and returns the token.
    pub fn issue(&self, entry: OpaqueToken, now_ms: u64) -> String {
        self.issue_as(random_token(), entry, now_ms)
    }

    /// As [`Self::issue`], under a token value given by the caller (an IdP restarted with its
    /// token store, in tests).
    pub fn issue_as(&self, token: String, entry: OpaqueToken, now_ms: u64) -> String {
        let mut inner = self.lock();
        inner.inserts += 1;
        if inner.inserts % PURGE_EVERY == 0 {
            inner.tokens.retain(|_, t| t.expires_at_ms > now_ms);
        }
        inner.tokens.insert(token.clone(), entry);
        token
    }

    /// The token's record if it exists and has not expired.
    pub fn active(&self, token: &str, now_ms: u64) -> Option<OpaqueToken> {
        self.lock()
            .tokens
            .get(token)
            .filter(|t| t.expires_at_ms > now_ms)
            .cloned()
    }

    /// Forgets the token; `true` if it was known.
    pub fn revoke(&self, token: &str) -> bool {
        self.lock().tokens.remove(token).is_some()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().tokens.len()
    }
}

/// 64 lowercase hex characters: SHA-256 over two random v4 UUIDs (244 random bits),
/// which spreads the entropy evenly without adding an RNG dependency.
fn random_token() -> String {
    let mut hasher = Sha256::new();
    hasher.update(uuid::Uuid::new_v4().as_bytes());
    hasher.update(uuid::Uuid::new_v4().as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(now_ms: u64, ttl_ms: u64) -> OpaqueToken {
        OpaqueToken {
            sub: "42".into(),
            username: Some("alice".into()),
            scope: LOGIN_SCOPE.into(),
            client_id: LOGIN_CLIENT_ID.into(),
            issued_at_ms: now_ms,
            expires_at_ms: now_ms + ttl_ms,
            omit_sub: false,
            extra: Default::default(),
        }
    }

    #[test]
    fn tokens_are_64_hex_and_unique() {
        let a = random_token();
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(a, random_token());
    }

    #[test]
    fn expiry_and_revocation() {
        let store = KnoxStore::default();
        let now = 1_000_000;
        let t = store.issue(entry(now, 5_000), now);
        assert_eq!(store.active(&t, now).map(|e| e.sub), Some("42".into()));
        assert!(store.active(&t, now + 4_999).is_some());
        assert!(store.active(&t, now + 5_000).is_none(), "expired at exp");
        assert!(store.active("unknown", now).is_none());

        let t2 = store.issue(entry(now, 5_000), now);
        assert!(store.revoke(&t2));
        assert!(!store.revoke(&t2), "second revoke is a no-op");
        assert!(store.active(&t2, now).is_none());
    }

    #[test]
    fn expired_entries_are_purged_eventually() {
        let store = KnoxStore::default();
        for _ in 0..PURGE_EVERY - 1 {
            store.issue(entry(0, 1), 0);
        }
        assert_eq!(store.len() as u64, PURGE_EVERY - 1);
        store.issue(entry(10, 1_000), 10);
        assert_eq!(store.len(), 1);
    }
}
