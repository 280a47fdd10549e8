//! Rate limits: local (governor) and shared (GCRA in a test-owned redis-server), headers,
//! tiers, honest client identity, and Redis going away.

use authgate_tests::tokens::{now, sign};
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use std::time::Duration;

fn config(mock: &Mock, redis: Option<&Redis>, trusted: &str) -> String {
    let redis_section = redis.map_or(String::new(), |r| {
        format!("redis: {{ url: \"{}\", command_timeout: 100ms }}", r.url())
    });
    let shared_scope = if redis.is_some() { "shared" } else { "local" };
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s, trusted_proxies: [{trusted}] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
{redis_section}
upstreams: {{ lms: {{ endpoints: ["{mock}"] }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id }}
rate_limits:
  ip3: {{ rate: 1/s, burst: 3, key: client_ip, scope: local }}
  user: {{ rate: 1/m, burst: 3, key: subject, scope: local }}
  team: {{ rate: 1/m, burst: 50, key: "header:X-Team", scope: {shared_scope} }}
  shared3: {{ rate: 1/m, burst: 3, key: client_ip, scope: {shared_scope} }}
routes:
  - {{ name: ip, path_prefix: /echo/ip/, auth: none, rate_limit: ip3, upstream: lms }}
  - {{ name: tiers, path_prefix: /echo/tiers/, auth: optional, rate_limit: user, upstream: lms }}
  - {{ name: team, path_prefix: /echo/team/, auth: none, rate_limit: team, upstream: lms }}
  - {{ name: shared, path_prefix: /echo/shared/, auth: none, rate_limit: [shared3], upstream: lms }}
  - {{ name: open, path_prefix: /echo/, auth: none, upstream: lms }}
"#,
        mock = mock.addr
    )
}

fn start(redis: Option<&Redis>, trusted: &str) -> (Mock, Gateway) {
    let mock = Mock::start("m");
    let gw = Gateway::start(
        &config(&mock, redis, trusted),
        &[("JWT_SECRET", MOCK_JWT_SECRET)],
    );
    (mock, gw)
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> reqwest::blocking::Response {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().expect("send")
}

fn header(r: &reqwest::blocking::Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[test]
fn burst_then_429_with_a_retry_after_that_works() {
    let (_mock, gw) = start(None, "");
    for want_remaining in [2, 1, 0] {
        let r = get(&gw, "/echo/ip/x", &[]);
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "ratelimit-limit"), Some(3));
        assert_eq!(header(&r, "ratelimit-remaining"), Some(want_remaining));
        assert!(header(&r, "ratelimit-reset").is_some_and(|s| (1..=3).contains(&s)));
    }
    let r = get(&gw, "/echo/ip/x", &[]);
    assert_eq!(r.status(), 429);
    let retry_after = header(&r, "retry-after").expect("Retry-After");
    assert_eq!(retry_after, 1);
    assert_eq!(header(&r, "ratelimit-limit"), Some(3));
    assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
    assert!(header(&r, "ratelimit-reset").is_some_and(|s| (2..=3).contains(&s)));
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"], "rate_limited");
    assert_eq!(v["policy"], "ip3");
    assert_eq!(v["retry_after_s"], 1);
    std::thread::sleep(Duration::from_secs(retry_after));
    assert_eq!(
        get(&gw, "/echo/ip/x", &[]).status(),
        200,
        "after waiting Retry-After"
    );
    let text = gw.metrics();
    assert_eq!(
        metric(
            &text,
            "authgate_rate_limited_total",
            &[("route", "ip"), ("policy", "ip3")]
        ),
        1.0
    );
    // Unlimited routes carry no RateLimit headers.
    assert!(get(&gw, "/echo/x", &[])
        .headers()
        .get("ratelimit-limit")
        .is_none());
}

#[test]
fn subjects_get_their_own_buckets_and_anonymous_callers_share_the_ip_tier() {
    let (_mock, gw) = start(None, "");
    let token = |uid: u64| {
        format!(
            "Bearer {}",
            sign(
                Algorithm::HS256,
                MOCK_JWT_SECRET,
                None,
                &json!({"user_id": uid, "exp": now() + 600})
            )
        )
    };
    let (alice, bob) = (token(1), token(2));
    for _ in 0..3 {
        assert_eq!(
            get(&gw, "/echo/tiers/x", &[("authorization", &alice)]).status(),
            200
        );
    }
    assert_eq!(
        get(&gw, "/echo/tiers/x", &[("authorization", &alice)]).status(),
        429
    );
    assert_eq!(
        get(&gw, "/echo/tiers/x", &[("authorization", &bob)]).status(),
        200,
        "bob has his own bucket"
    );
    // Anonymous callers fall back to their IP: a bucket of their own, not alice's or bob's.
    for _ in 0..3 {
        assert_eq!(get(&gw, "/echo/tiers/x", &[]).status(), 200);
    }
    assert_eq!(get(&gw, "/echo/tiers/x", &[]).status(), 429);
    assert_eq!(
        get(&gw, "/echo/tiers/x", &[("authorization", &bob)]).status(),
        200
    );
}

#[test]
fn a_spoofed_x_forwarded_for_gets_no_fresh_bucket() {
    let (_mock, gw) = start(None, "");
    for i in 0..3 {
        let r = get(
            &gw,
            "/echo/ip/x",
            &[("x-forwarded-for", &format!("198.51.100.{i}"))],
        );
        assert_eq!(r.status(), 200);
    }
    let r = get(&gw, "/echo/ip/x", &[("x-forwarded-for", "203.0.113.99")]);
    assert_eq!(r.status(), 429, "a client must not pick its own identity");

    // Behind a trusted proxy, the right-most untrusted entry is the client.
    let (_mock2, gw2) = start(None, "\"127.0.0.0/8\"");
    for _ in 0..3 {
        assert_eq!(
            get(
                &gw2,
                "/echo/ip/x",
                &[("x-forwarded-for", "6.6.6.6, 198.51.100.1")]
            )
            .status(),
            200
        );
    }
    assert_eq!(
        get(
            &gw2,
            "/echo/ip/x",
            &[("x-forwarded-for", "7.7.7.7, 198.51.100.1")]
        )
        .status(),
        429
    );
    assert_eq!(
        get(&gw2, "/echo/ip/x", &[("x-forwarded-for", "198.51.100.2")]).status(),
        200
    );
}

#[test]
fn two_replicas_share_one_limit_through_redis() {
    let redis = Redis::start();
    let mock = Mock::start("m");
    let yaml = config(&mock, Some(&redis), "");
    let a = Gateway::start(&yaml, &[("JWT_SECRET", MOCK_JWT_SECRET)]);
    let b = Gateway::start(&yaml, &[("JWT_SECRET", MOCK_JWT_SECRET)]);
    let urls: Vec<String> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                a.url("/echo/team/x")
            } else {
                b.url("/echo/team/x")
            }
        })
        .collect();
    let allowed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for chunk in urls.chunks(10) {
            let allowed = &allowed;
            s.spawn(move || {
                for url in chunk {
                    let r = client()
                        .get(url)
                        .header("X-Team", "blue")
                        .send()
                        .expect("send");
                    match r.status().as_u16() {
                        200 => {
                            allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        429 => {}
                        other => panic!("unexpected {other}"),
                    }
                }
            });
        }
    });
    let allowed = allowed.into_inner();
    assert!(
        (45..=55).contains(&allowed),
        "{allowed} allowed across two replicas for a burst of 50"
    );
    // Another team has its own shared bucket.
    assert_eq!(get(&a, "/echo/team/x", &[("X-Team", "red")]).status(), 200);
    // The header value is a credential for all we know: it never reaches Redis as it is.
    let keys = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--scan"])
        .output()
        .expect("redis-cli");
    let keys = String::from_utf8_lossy(&keys.stdout);
    assert!(keys.contains("authgate:rl:team:hdr:"), "{keys}");
    assert!(!keys.contains("blue"), "{keys}");
}

#[test]
fn redis_down_still_limits() {
    let mut redis = Redis::start();
    let (_mock, gw) = start(Some(&redis), "");
    assert_eq!(get(&gw, "/echo/shared/x", &[]).status(), 200);
    redis.proc.kill();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&gw, "/echo/shared/x", &[]).status().as_u16());
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(
        statuses[3..].iter().all(|s| *s == 429),
        "limited by the local fallback: {statuses:?}"
    );
    let text = gw.metrics();
    assert!(metric(&text, "authgate_redis_errors_total", &[("op", "ratelimit")]) >= 1.0);
    assert!(
        metric(
            &text,
            "authgate_rate_limit_fallbacks_total",
            &[("policy", "shared3")]
        ) >= 6.0
    );
}

/// Gateways sharing one Redis: `count` of them, each with the same configuration.
fn shared_gateways(redis: &Redis, mock: &Mock, policy: &str, count: usize) -> Vec<Gateway> {
    let yaml = format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s }}
admin: {{ listen: "${{AG_ADMIN}}" }}
redis: {{ url: "{r}", command_timeout: 2s }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
rate_limits:
  p: {{ {policy}, key: "header:X-Team", scope: shared }}
routes:
  - {{ name: limited, path_prefix: /echo/, auth: none, rate_limit: p, upstream: lms }}
"#,
        r = redis.url(),
        m = mock.addr
    );
    (0..count).map(|_| Gateway::start(&yaml, &[])).collect()
}

/// Rate-limit scripts Redis has run so far (EVALSHA, and EVAL after a NOSCRIPT).
fn script_calls(redis: &Redis) -> u64 {
    redis_cli(redis.port, &["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn reserved_tokens_never_let_replicas_admit_more_than_the_limit() {
    let redis = Redis::start();
    let mock = Mock::start("m");
    for count in [2usize, 4] {
        // A small burst stays exact across the replicas: 20, then 429, however the requests
        // are spread (one to each of the others first, then all to the first).
        let gws = shared_gateways(&redis, &mock, "rate: 1/m, burst: 20", count);
        let team = format!("exact-{count}");
        let statuses: Vec<u16> = (0..26)
            .map(|i| {
                let gw = if i + 1 < count { i + 1 } else { 0 };
                client()
                    .get(gws[gw].url("/echo/x"))
                    .header("X-Team", &team)
                    .send()
                    .expect("send")
                    .status()
                    .as_u16()
            })
            .collect();
        assert!(
            statuses[..20].iter().all(|s| *s == 200) && statuses[20..].iter().all(|s| *s == 429),
            "{count} gateways, burst 20: {statuses:?}"
        );
        drop(gws);

        let gws = shared_gateways(&redis, &mock, "rate: 50/s, burst: 20", count);

        // Far more than the limit, from 8 clients over every gateway for about 2 s: never more
        // admitted than burst + rate x elapsed, and most of that used.
        let team = format!("flood-{count}");
        let started = std::time::Instant::now();
        let allowed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (gws, team, allowed) = (&gws, &team, &allowed);
                s.spawn(move || {
                    let c = client();
                    let mut i = t;
                    while started.elapsed() < Duration::from_secs(2) {
                        i += 1;
                        let r = c
                            .get(gws[i % gws.len()].url("/echo/x"))
                            .header("X-Team", team)
                            .send()
                            .expect("send");
                        match r.status().as_u16() {
                            200 => {
                                allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            429 => {}
                            other => panic!("unexpected {other}"),
                        }
                    }
                });
            }
        });
        let elapsed = started.elapsed();
        let allowed = allowed.into_inner();
        // The bound is the shared bucket's: a gateway that fell back to its local one (Redis
        // slower than command_timeout) would make it meaningless, so none may have.
        for gw in &gws {
            let fallbacks = metric(
                &gw.metrics(),
                "authgate_rate_limit_fallbacks_total",
                &[("policy", "p")],
            );
            assert_eq!(
                fallbacks, 0.0,
                "{count} gateways: every check reached Redis"
            );
        }
        let limit = 20 + (elapsed.as_secs_f64() * 50.0).floor() as u64;
        assert!(
            allowed <= limit,
            "{count} gateways: {allowed} admitted in {elapsed:?}, the limit allows {limit}"
        );
        assert!(
            allowed * 10 >= limit * 8,
            "{count} gateways: only {allowed} admitted of the {limit} the limit allows"
        );
    }
}

#[test]
fn at_half_the_limits_rate_a_shared_limit_costs_one_round_trip_per_ten_requests() {
    let redis = Redis::start();
    let mock = Mock::start("m");
    let gws = shared_gateways(&redis, &mock, "rate: 200/s, burst: 1000", 2);
    let c = client();
    let before = script_calls(&redis);
    // About 100 requests a second, spread over both gateways. A grant lasts a quarter of the
    // burst's intervals (1.25 s here) however slowly requests come, so a slow machine means
    // fewer requests per round trip: the bound holds down to about 60 ms per request.
    let requests = 300;
    for i in 0..requests {
        let r = c
            .get(gws[i % 2].url("/echo/x"))
            .header("X-Team", "steady")
            .send()
            .expect("send");
        assert_eq!(r.status(), 200, "request {i}: far below the limit");
        std::thread::sleep(Duration::from_millis(10));
    }
    let trips = script_calls(&redis) - before;
    assert!(trips >= 2, "both gateways asked Redis: {trips}");
    assert!(
        trips * 10 <= requests as u64,
        "{trips} round trips to Redis for {requests} requests"
    );
}
