//! Redis as the shared tier: the commands behind each [`SharedTier`] method.

use super::{RedisLink, RedisOp};
use crate::tier::{kind, Bucket, Grant, Revocation, Revoked, SharedTier, TokenHash};
use async_trait::async_trait;
use std::time::Duration;

#[async_trait]
impl SharedTier for RedisLink {
    async fn cached(&self, token: &TokenHash) -> Option<(Vec<u8>, Duration)> {
        let rkey = self.key(kind::CACHED, &hex::encode(token));
        // One round trip: the value and its remaining lifetime.
        let (value, pttl): (Option<Vec<u8>>, i64) = self
            .run(RedisOp::CacheGet, |mut c| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&rkey)
                    .cmd("PTTL")
                    .arg(&rkey)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let left = Duration::from_millis(u64::try_from(pttl).ok().filter(|&ms| ms > 0)?);
        Some((value?, left))
    }

    async fn cache(&self, token: &TokenHash, value: Vec<u8>, ttl: Duration) {
        let rkey = self.key(kind::CACHED, &hex::encode(token));
        let ms = ttl.as_millis().max(1) as u64;
        let _: Option<()> = self
            .run(RedisOp::CacheSet, |mut c| async move {
                redis::cmd("SET")
                    .arg(rkey)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await;
    }

    async fn revoke(&self, r: &Revocation) -> Option<()> {
        let stored = r.stored();
        let (key, value) = (self.key(stored.kind, stored.id), stored.value);
        let ttl_ms = stored.ttl.as_millis() as u64;
        let event = serde_json::to_string(r).ok()?;
        let channel = format!("{}events", self.prefix);
        // A revoked token's shared cache entry goes too.
        let cached = match r {
            Revocation::Token { id, .. } => Some(self.key(kind::CACHED, id)),
            _ => None,
        };
        // One command per key (a cluster may keep them on three nodes): the revocation is
        // stored before it is announced, so a replica that hears of it and looks finds it.
        // The cached entry's removal may fail without holding the revocation back: a replica
        // that reads that entry checks the revocation keys first.
        self.run(RedisOp::Revoke, |mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .exec_async(&mut c)
                .await?;
            if let Some(k) = cached {
                let _ = redis::cmd("DEL").arg(k).exec_async(&mut c).await;
            }
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(event)
                .exec_async(&mut c)
                .await
        })
        .await
    }

    async fn revocations(
        &self,
        token: &TokenHash,
        jti: Option<&str>,
        subject: &str,
    ) -> Option<Revoked> {
        let token_key = self.key(kind::REVOKED, &hex::encode(token));
        let jti_key = jti.map(|j| self.key(kind::REVOKED, j));
        let subject_key = self.key(kind::REVOKED_SUBJECT, subject);
        let cluster = self.is_cluster();
        let values: Vec<Option<String>> = self
            .run(RedisOp::RevokeCheck, |mut c| async move {
                let mut keys = vec![token_key, subject_key];
                keys.extend(jti_key);
                if !cluster {
                    return redis::cmd("MGET").arg(&keys).query_async(&mut c).await;
                }
                // The keys hash to different slots: one GET each, sent together. One node not
                // answering must not hide what another says (a revocation found counts).
                let gets = keys.iter().map(|k| {
                    let mut c = c.clone();
                    async move {
                        redis::cmd("GET")
                            .arg(k)
                            .query_async::<Option<String>>(&mut c)
                            .await
                    }
                });
                let answers = futures_util::future::join_all(gets).await;
                if answers.iter().all(Result::is_err) {
                    return answers
                        .into_iter()
                        .find_map(Result::err)
                        .map_or(Ok(Vec::new()), Err);
                }
                Ok(answers.into_iter().map(|a| a.ok().flatten()).collect())
            })
            .await?;
        Some(Revoked {
            token: values.first().is_some_and(Option::is_some),
            subject_not_before_ms: values
                .get(1)
                .cloned()
                .flatten()
                .and_then(|v| v.parse::<u64>().ok()),
            jti: values.get(2).is_some_and(Option::is_some),
        })
    }

    async fn reserve(&self, bucket: Bucket<'_>, want: u32) -> Option<Grant> {
        let key = self.key(kind::BUCKET, bucket.name);
        super::gcra::reserve(self, &key, bucket.interval, bucket.burst, want).await
    }

    async fn peek(&self, bucket: Bucket<'_>) -> Option<u32> {
        let key = self.key(kind::BUCKET, bucket.name);
        super::gcra::peek(self, &key, bucket.interval, bucket.burst).await
    }

    async fn first_use(&self, jti: &str, ttl: Duration) -> Option<bool> {
        let key = self.key(kind::DPOP_PROOF, jti);
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self
            .run(RedisOp::DpopReplay, |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Some(set.is_some())
    }
}
