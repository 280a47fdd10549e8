//! GCRA in Redis: one Lua script, loaded once and called by its SHA (EVALSHA), one round trip
//! per reservation of one or more tokens. It reads the server's clock (`TIME`), so replicas with skewed clocks still share
//! one limit, and it runs atomically, so concurrent replicas cannot both take the last token.

use super::{RedisLink, RedisOp};
use crate::tier::{Grant, BATCH_FROM};
use std::sync::LazyLock;
use std::time::Duration;

/// KEYS[1]: the bucket. ARGV[1]: emission interval in µs. ARGV[2]: burst. ARGV[3]: tokens
/// wanted. ARGV[4]: from how many tokens left a grant may be more than one. Grants a quarter of
/// what the bucket holds from there, one below it (see `ratelimit::lease`).
/// Returns {granted, remaining, retry_after_us, reset_us}; `reset_us` is also when the bucket
/// could be full again, after which the granted tokens are void (see `ratelimit::lease`).
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tau = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + tau - tat) / interval)
if room < 1 then
  return {0, 0, tat + interval - tau - now, tat - now}
end
local n = 1
if room >= tonumber(ARGV[4]) then n = math.floor(room / 4) end
if n > want then n = want end
local new_tat = tat + n * interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {n, room - n, 0, new_tat - now}
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
pub(super) async fn peek(
    link: &RedisLink,
    key: &str,
    interval: Duration,
    burst: u32,
) -> Option<u32> {
    let interval_us = interval.as_micros().max(1) as u64;
    let room: i64 = link
        .run(RedisOp::RateLimit, |mut conn| async move {
            PEEK_SCRIPT
                .key(key)
                .arg(interval_us)
                .arg(burst)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
    Some(room.clamp(0, i64::from(burst)) as u32)
}

/// Up to `want` tokens of the bucket; `None` when Redis could not answer in time (the caller
/// then uses the local limiter).
pub(super) async fn reserve(
    link: &RedisLink,
    key: &str,
    interval: Duration,
    burst: u32,
    want: u32,
) -> Option<Grant> {
    let interval_us = interval.as_micros().max(1) as u64;
    let (granted, remaining, retry_us, reset_us): (i64, i64, i64, i64) = link
        .run(RedisOp::RateLimit, |mut conn| async move {
            SCRIPT
                .key(key)
                .arg(interval_us)
                .arg(burst)
                .arg(want.max(1))
                .arg(BATCH_FROM)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
    let us = |v: i64| Duration::from_micros(v.max(0) as u64);
    Some(Grant {
        granted: granted.clamp(0, i64::from(want.max(1))) as u32,
        remaining: remaining.clamp(0, i64::from(burst)) as u32,
        retry_after: us(retry_us),
        reset: us(reset_us),
    })
}
