//! Server nonces for DPoP proofs (RFC 9449 8): a proof must carry a value the gateway handed
//! out recently, so a proof made in advance (by malware that can sign but not wait for the
//! gateway) is refused.
//!
//! A nonce is stateless: the time bucket it was made in and an HMAC of it, so any replica that
//! holds the key accepts it. The key is random per process and, with Redis, one shared by all
//! replicas (`dpop:nonce-key`, written once with `SET NX`). Nonces rotate every
//! [`PERIOD`]; the current and the previous one are accepted.

use crate::redis_link::{RedisLink, RedisOp};
use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long one nonce is handed out; it is accepted for up to twice that.
pub const PERIOD: Duration = Duration::from_secs(120);

const TAG_LEN: usize = 16;

pub struct Nonces {
    key: ArcSwap<NonceKey>,
}

struct NonceKey {
    raw: [u8; 32],
    hmac: hmac::Key,
}

impl NonceKey {
    fn new(raw: [u8; 32]) -> Self {
        NonceKey {
            raw,
            hmac: hmac::Key::new(hmac::HMAC_SHA256, &raw),
        }
    }
}

impl Default for Nonces {
    fn default() -> Self {
        Nonces {
            key: ArcSwap::from_pointee(NonceKey::new(random_key())),
        }
    }
}

fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    // The system's random source failing is not something to run on without.
    #[allow(clippy::expect_used)]
    SystemRandom::new().fill(&mut k).expect("system randomness");
    k
}

fn bucket(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / PERIOD.as_secs())
}

impl Nonces {
    fn make(&self, bucket: u64) -> String {
        let tag = hmac::sign(&self.key.load().hmac, &bucket.to_be_bytes());
        let mut raw = [0u8; 8 + TAG_LEN];
        raw[..8].copy_from_slice(&bucket.to_be_bytes());
        raw[8..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        B64.encode(raw)
    }

    /// The nonce handed out now (`DPoP-Nonce`).
    pub fn current(&self, now: SystemTime) -> String {
        self.make(bucket(now))
    }

    /// Whether a proof's nonce is this period's or the previous one's.
    pub fn accepts(&self, nonce: &str, now: SystemTime) -> bool {
        let Ok(raw) = B64.decode(nonce) else {
            return false;
        };
        let Ok(raw) = <[u8; 8 + TAG_LEN]>::try_from(raw.as_slice()) else {
            return false;
        };
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[..8]);
        let made = u64::from_be_bytes(b);
        let now = bucket(now);
        if made != now && made.checked_add(1) != Some(now) {
            return false;
        }
        let tag = hmac::sign(&self.key.load().hmac, &made.to_be_bytes());
        // Compared in constant time: the tag is what an attacker would have to guess.
        use subtle::ConstantTimeEq;
        bool::from(tag.as_ref()[..TAG_LEN].ct_eq(&raw[8..]))
    }

    fn set_key(&self, raw: [u8; 32]) {
        if self.key.load().raw != raw {
            self.key.store(Arc::new(NonceKey::new(raw)));
        }
    }
}

/// Keeps the nonce key the one all replicas share through Redis: offers its own with `SET NX`
/// and takes whichever is stored (its own, when it was first: nonces already handed out stay
/// good). Until Redis answers, this process's own key serves
/// (nonces made then are accepted here only). Ends when the link or the nonces go.
pub async fn share(link: Weak<RedisLink>, nonces: Weak<Nonces>) {
    loop {
        let (Some(l), Some(n)) = (link.upgrade(), nonces.upgrade()) else {
            return;
        };
        let key = l.key("dpop", "nonce-key");
        let offer = B64.encode(n.key.load().raw);
        let stored: Option<Option<String>> = l
            .run(RedisOp::DpopReplay, |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(offer)
                    .arg("NX")
                    .arg("GET")
                    .query_async(&mut c)
                    .await
            })
            .await;
        let wait = match stored {
            // `SET NX GET` answers the value already there, or nil when ours was stored.
            Some(Some(existing)) => match B64
                .decode(existing)
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
            {
                Some(k) => {
                    n.set_key(k);
                    Duration::from_secs(60)
                }
                None => Duration::from_secs(5),
            },
            Some(None) => Duration::from_secs(60),
            None => Duration::from_secs(2),
        };
        drop((l, n));
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_and_previous_accepted_older_and_forged_not() {
        let n = Nonces::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let nonce = n.current(t);
        assert!(n.accepts(&nonce, t));
        assert!(n.accepts(&nonce, t + PERIOD));
        assert!(!n.accepts(&nonce, t + PERIOD * 2));
        assert!(!n.accepts(&nonce, t - PERIOD));
        let other = Nonces::default();
        assert!(!other.accepts(&nonce, t), "another key's nonce");
        let mut forged = B64.decode(&nonce).expect("b64");
        forged[12] ^= 1;
        assert!(!n.accepts(&B64.encode(forged), t));
        for junk in ["", "x", "!!!!", &"A".repeat(5000)] {
            assert!(!n.accepts(junk, t));
        }
    }

    #[test]
    fn replicas_with_one_key_accept_each_others_nonces() {
        let (a, b) = (Nonces::default(), Nonces::default());
        let key = random_key();
        a.set_key(key);
        b.set_key(key);
        let t = SystemTime::now();
        assert!(b.accepts(&a.current(t), t));
    }
}
