//! GCRA in Redis: one Lua script, loaded once and called by its SHA (EVALSHA), one round trip
//! per check. It reads the server's clock (`TIME`), so replicas with skewed clocks still share
//! one limit, and it runs atomically, so concurrent replicas cannot both take the last token.

use super::Verdict;
use crate::redis_link::{RedisLink, RedisOp};
use std::sync::LazyLock;
use std::time::Duration;

/// KEYS[1]: the bucket. ARGV[1]: emission interval in µs. ARGV[2]: burst.
/// Returns {allowed, remaining, retry_after_us, reset_us}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tau = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tau
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((now - allow_at) / interval)
return {1, remaining, 0, new_tat - now}
"#;

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA));

/// The same arithmetic, read only: how many requests the bucket allows now.
const PEEK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + interval * burst - tat) / interval)
if room > burst then room = burst end
if room < 0 then room = 0 end
return room
"#;

static PEEK_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PEEK));

/// What the bucket allows now, spending nothing; `None` when Redis does not answer.
pub async fn peek(link: &RedisLink, key: &str, interval: Duration, burst: u32) -> Option<u32> {
    let room: i64 = run(link, &PEEK_SCRIPT, key, interval, burst).await?;
    Some(room.clamp(0, i64::from(burst)) as u32)
}

/// One of the GCRA scripts on a bucket: `KEYS[1]` the key, `ARGV` interval (µs) and burst.
async fn run<T: redis::FromRedisValue>(
    link: &RedisLink,
    script: &redis::Script,
    key: &str,
    interval: Duration,
    burst: u32,
) -> Option<T> {
    let interval_us = interval.as_micros().max(1) as u64;
    link.run(RedisOp::RateLimit, |mut conn| async move {
        script
            .key(key)
            .arg(interval_us)
            .arg(burst)
            .invoke_async(&mut conn)
            .await
    })
    .await
}

/// `None` when Redis could not answer in time; the caller then uses the local limiter.
pub async fn check(link: &RedisLink, key: &str, interval: Duration, burst: u32) -> Option<Verdict> {
    let (allowed, remaining, retry_us, reset_us): (i64, i64, i64, i64) =
        run(link, &SCRIPT, key, interval, burst).await?;
    let us = |v: i64| Duration::from_micros(v.max(0) as u64);
    Some(if allowed == 1 {
        Verdict::Allowed {
            remaining: remaining.clamp(0, i64::from(burst)) as u32,
            reset: us(reset_us),
        }
    } else {
        Verdict::Limited {
            retry_after: us(retry_us),
            reset: us(reset_us),
        }
    })
}
