//! State that never outlives the decision it came from: revocations as long as the token
//! could pass.

use authgate_tests::*;
use jsonwebtoken::Algorithm;
use std::process::Command;

fn pttl_ms(redis: &Redis, key: &str) -> i64 {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "PTTL", key])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number")
}

const DAY_MS: i64 = 24 * 3600 * 1000;

#[test]
fn revocations_last_as_long_as_the_token_could_pass() {
    let mock = Mock::start("m");
    let redis = Redis::start();
    let gw = Gateway::start(
        &format!(
            r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
redis: {{ url: "{r}", command_timeout: 500ms }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  revocation_ttl: 7d
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id, leeway: 30s, required_claims: {{ token_type: access }} }}
routes:
  - {{ name: logout, path: /echo/logout/, methods: [POST], auth: required, revokes_token: true, upstream: lms }}
  - {{ name: r, path_prefix: /echo/, auth: required, upstream: lms }}
"#,
            r = redis.url(),
            m = mock.addr
        ),
        &[("JWT_SECRET", MOCK_JWT_SECRET)],
    );
    // A token valid for three more days (a refresh-like lifetime): its revocation must not
    // lapse after a day.
    let three_days = 3 * 24 * 3600;
    let token = tokens::sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": 9, "exp": tokens::now() + three_days, "jti": "long-lived", "token_type": "access"}),
    );
    let r = client()
        .post(gw.url("/echo/logout/"))
        .bearer_auth(&token)
        .send()
        .expect("logout");
    assert_eq!(r.status(), 200);
    let ttl = pttl_ms(&redis, "authgate:revoked:long-lived");
    let want = (three_days as i64 + 30) * 1000;
    assert!(
        ttl > want - 60_000 && ttl <= want,
        "revocation kept {ttl} ms, the token passes for {want} ms"
    );
    let r = client()
        .get(gw.url("/echo/x"))
        .bearer_auth(&token)
        .send()
        .expect("send");
    assert_eq!(r.status(), 401);

    // Without a known expiry: auth.revocation_ttl.
    for (body, key) in [
        (json!({"subject": "9"}), "authgate:revoked-subject:9"),
        (json!({"jti": "some-jti"}), "authgate:revoked:some-jti"),
    ] {
        let r = client()
            .post(gw.admin_url("/admin/revoke"))
            .json(&body)
            .send()
            .expect("revoke");
        assert_eq!(r.status(), 200, "{body}");
        let ttl = pttl_ms(&redis, key);
        assert!(
            ttl > 7 * DAY_MS - 60_000 && ttl <= 7 * DAY_MS,
            "{key}: kept {ttl} ms, revocation_ttl is 7d"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Abuse before authentication.

fn abuse_config(
    mock: &Mock,
    auth_extra: &str,
    introspect_query: &str,
    max_concurrency: u32,
) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  {auth_extra}
  providers:
    knox:
      type: introspection
      url: "http://{m}/api/auth/introspect/{introspect_query}"
      client_id: {cid}
      client_secret_env: INTROSPECTION_SECRET
      timeout: 5s
      max_concurrency: {max_concurrency}
rate_limits:
  per_ip: {{ rate: 1/m, burst: 3, key: client_ip }}
routes:
  - {{ name: limited, path_prefix: /echo/limited/, auth: required, rate_limit: per_ip, upstream: lms }}
  - {{ name: r, path_prefix: /echo/, auth: required, upstream: lms }}
"#,
        m = mock.addr,
        cid = MOCK_INTROSPECTION.0,
    )
}

fn junk_call(gw: &Gateway, path: &str, i: usize) -> (u16, Value) {
    let r = client()
        .get(gw.url(path))
        .bearer_auth(format!("junk-{i}-{}", "x".repeat(20)))
        .send()
        .expect("send");
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

#[test]
fn junk_tokens_spend_client_ip_limits_before_authentication() {
    let mock = Mock::start("m");
    let gw = Gateway::start(
        &abuse_config(&mock, "", "", 64),
        &[("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1)],
    );
    let statuses: Vec<u16> = (0..8)
        .map(|i| junk_call(&gw, "/echo/limited/x", i).0)
        .collect();
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429, 429, 429]);
    // Only the three attempts within the limit cost the IdP a call.
    assert_eq!(mock.count("POST /api/auth/introspect"), 3);
}

#[test]
fn a_spent_failure_budget_answers_credentials_429_without_verifying_them() {
    let mock = Mock::start("m");
    let gw = Gateway::start(
        &abuse_config(&mock, "failure_limit: { rate: 1/m, burst: 3 }", "", 64),
        &[("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1)],
    );
    for i in 0..3 {
        assert_eq!(junk_call(&gw, "/echo/x", i).0, 401, "attempt {i}");
    }
    for i in 3..10 {
        let (status, body) = junk_call(&gw, "/echo/x", i);
        assert_eq!(status, 429, "attempt {i}: {body}");
        assert_eq!(body["policy"], "auth_failures");
    }
    assert_eq!(
        mock.count("POST /api/auth/introspect"),
        3,
        "blocked attempts are never introspected"
    );
    // Even a good token from that address waits; a request without one is just unauthenticated.
    let v: Value = client()
        .post(mock.url("/__mock/opaque"))
        .json(&json!({"sub": "1", "ttl_s": 600}))
        .send()
        .expect("opaque")
        .json()
        .expect("json");
    let good = v["token"].as_str().expect("token");
    let r = client()
        .get(gw.url("/echo/x"))
        .bearer_auth(good)
        .send()
        .expect("send");
    assert_eq!(r.status(), 429);
    let r = client().get(gw.url("/echo/x")).send().expect("send");
    assert_eq!(r.status(), 401);
    assert!(
        metric(
            &gw.metrics(),
            "authgate_rate_limited_total",
            &[("route", "r"), ("policy", "auth_failures")]
        ) >= 7.0
    );
}

#[test]
fn a_junk_token_flood_costs_the_introspection_endpoint_at_most_max_concurrency() {
    let mock = Mock::start("m");
    // Every introspection call takes 2 s, so the flood is all in flight at once.
    let gw = Gateway::start(
        &abuse_config(&mock, "", "?delay_ms=2000", 2),
        &[("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1)],
    );
    let gw = &gw;
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| s.spawn(move || junk_call(gw, "/echo/x", i).0))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        6,
        "{statuses:?}"
    );
    assert_eq!(mock.count("POST /api/auth/introspect"), 2);
}

#[test]
fn ipv6_clients_share_a_bucket_per_64_and_mapped_ipv4_peers_are_trusted_proxies() {
    let mock = Mock::start("m");
    // A dual-stack listener: IPv4 peers arrive as ::ffff:127.0.0.1, which must still match
    // trusted_proxies 127.0.0.0/8, so X-Forwarded-For is believed.
    let gw = Gateway::start(
        &format!(
            r#"
server: {{ listen: ["[::]:${{AG_LISTEN_PORT}}"], trusted_proxies: ["127.0.0.0/8"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
rate_limits:
  per_ip: {{ rate: 1/h, burst: 2, key: client_ip }}
routes: [{{ name: r, path_prefix: /, auth: none, rate_limit: per_ip, upstream: lms }}]
"#,
            m = mock.addr
        ),
        &[],
    );
    let from = |xff: &str| {
        client()
            .get(gw.url("/echo/x"))
            .header("X-Forwarded-For", xff)
            .send()
            .expect("send")
            .status()
            .as_u16()
    };
    // Three addresses of one /64: one client, burst 2.
    assert_eq!(from("2001:db8::1"), 200);
    assert_eq!(from("2001:db8::2"), 200);
    assert_eq!(from("2001:db8::abcd:3"), 429);
    // Another /64, and IPv4 clients behind the proxy, are others.
    assert_eq!(from("2001:db8:0:1::1"), 200);
    assert_eq!(from("203.0.113.1"), 200);
    assert_eq!(from("203.0.113.2"), 200);
    assert_eq!(from("203.0.113.2"), 200);
    assert_eq!(from("203.0.113.2"), 429);
}

// ---------------------------------------------------------------------------------------------
// Cached identities never outlive the provider that made them.

fn fingerprint_config(mock: &Mock, redis: Option<&Redis>, secret_var: &str) -> String {
    let redis = redis.map_or(String::new(), |r| {
        format!("redis: {{ url: \"{}\", command_timeout: 500ms }}", r.url())
    });
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
{redis}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: {secret_var} }}], subject_claim: user_id, required_claims: {{ token_type: access }} }}
    issuer: {{ type: jwt, algorithms: [RS256], jwks_url: "http://{m}/.well-known/jwks.json", jwks_refresh: 1s, audience: [api] }}
routes:
  - {{ name: jwks, path_prefix: /echo/jwks/, auth: {{ providers: [issuer] }}, upstream: lms }}
  - {{ name: r, path_prefix: /echo/, auth: {{ providers: [simple] }}, upstream: lms }}
"#,
        m = mock.addr
    )
}

fn hs256(secret: &str, user: u64) -> String {
    tokens::sign(
        Algorithm::HS256,
        secret,
        None,
        &json!({"user_id": user, "exp": tokens::now() + 600, "token_type": "access"}),
    )
}

fn status_of(gw: &Gateway, path: &str, token: &str) -> u16 {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .expect("send")
        .status()
        .as_u16()
}

const OLD: &str = "the-old-secret-that-leaked-0123456789";
const NEW: &str = "the-new-secret-after-rotation-0123456";

#[test]
fn a_rotated_secret_makes_identities_cached_under_the_old_one_misses() {
    let mock = Mock::start("m");
    let gw = Gateway::start(
        &fingerprint_config(&mock, None, "SECRET_A"),
        &[("SECRET_A", OLD), ("SECRET_B", NEW)],
    );
    let forged = hs256(OLD, 1);
    assert_eq!(status_of(&gw, "/echo/x", &forged), 200);
    assert_eq!(status_of(&gw, "/echo/x", &forged), 200, "now cached");
    // The operator rotates the leaked secret and reloads: the cached identity goes with it.
    std::fs::write(&gw.config, fingerprint_config(&mock, None, "SECRET_B")).expect("write");
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .expect("reload");
    assert_eq!(r.status(), 200);
    assert_eq!(status_of(&gw, "/echo/x", &forged), 401);
    assert_eq!(status_of(&gw, "/echo/x", &hs256(NEW, 1)), 200);
}

#[test]
fn a_replica_with_other_keys_never_takes_an_identity_from_redis() {
    let mock = Mock::start("m");
    let redis = Redis::start();
    let env = [("SECRET_A", OLD), ("SECRET_B", NEW)];
    let a = Gateway::start(&fingerprint_config(&mock, Some(&redis), "SECRET_A"), &env);
    let b = Gateway::start(&fingerprint_config(&mock, Some(&redis), "SECRET_B"), &env);
    let token = hs256(OLD, 2);
    assert_eq!(status_of(&a, "/echo/x", &token), 200);
    wait_until("the identity in Redis", WAIT, || {
        metric(
            &a.metrics(),
            "authgate_token_cache_total",
            &[("tier", "redis"), ("result", "miss")],
        ) >= 1.0
    });
    // Same provider name, other key: b must verify (and refuse) rather than trust a's entry.
    assert_eq!(status_of(&b, "/echo/x", &token), 401);
    assert_eq!(
        metric(
            &b.metrics(),
            "authgate_token_cache_total",
            &[("tier", "redis"), ("result", "hit")]
        ),
        0.0
    );
}

#[test]
fn a_jwks_key_the_issuer_retires_stops_working_at_the_next_refresh() {
    let mock = Mock::start("m");
    let gw = Gateway::start(
        &fingerprint_config(&mock, None, "SECRET_A"),
        &[("SECRET_A", OLD)],
    );
    gw.wait_ready();
    let token = tokens::sign(
        Algorithm::RS256,
        "rsa-1",
        Some("rsa-1"),
        &json!({"sub": "k", "aud": "api", "exp": tokens::now() + 600}),
    );
    assert_eq!(status_of(&gw, "/echo/jwks/x", &token), 200);
    assert_eq!(status_of(&gw, "/echo/jwks/x", &token), 200, "now cached");
    let refreshes = |gw: &Gateway| {
        metric(
            &gw.metrics(),
            "authgate_jwks_refresh_total",
            &[("provider", "issuer"), ("result", "ok")],
        )
    };
    let before = refreshes(&gw);
    client()
        .post(mock.url("/__mock/jwks/rotate?drop_old=true"))
        .send()
        .expect("rotate");
    wait_until("a JWKS refresh after the rotation", WAIT, || {
        refreshes(&gw) >= before + 2.0
    });
    assert_eq!(
        status_of(&gw, "/echo/jwks/x", &token),
        401,
        "rsa-1 is retired"
    );
}

// ---------------------------------------------------------------------------------------------
// Revocations that survive Redis going away.

#[test]
fn a_revocation_made_while_redis_is_down_reaches_every_replica_once_it_returns() {
    let mock = Mock::start("m");
    let mut redis = Redis::start();
    let port = redis.port;
    let yaml = format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
redis: {{ url: "redis://127.0.0.1:{port}/0", command_timeout: 200ms }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id, required_claims: {{ token_type: access }} }}
routes: [{{ name: r, path_prefix: /echo/, auth: required, upstream: lms }}]
"#,
        m = mock.addr
    );
    let env = [("JWT_SECRET", MOCK_JWT_SECRET)];
    let a = Gateway::start(&yaml, &env);
    let b = Gateway::start(&yaml, &env);
    let tokens: Vec<String> = (0..3)
        .map(|i| {
            tokens::sign(
                Algorithm::HS256,
                MOCK_JWT_SECRET,
                None,
                &json!({"user_id": 50 + i, "exp": tokens::now() + 600, "jti": format!("down-{i}"), "token_type": "access"}),
            )
        })
        .collect();
    for t in &tokens {
        assert_eq!(status_of(&a, "/echo/x", t), 200);
        assert_eq!(status_of(&b, "/echo/x", t), 200, "cached on b too");
    }
    // Redis goes away; a revokes all three.
    redis.proc.kill();
    for t in &tokens {
        let r = client()
            .post(a.admin_url("/admin/revoke"))
            .json(&json!({"token": t}))
            .send()
            .expect("revoke");
        assert_eq!(r.status(), 202, "applied here, not yet shared");
        assert_eq!(r.json::<Value>().expect("json")["replicas"], "pending");
        assert_eq!(status_of(&a, "/echo/x", t), 401, "refused here at once");
    }
    // Redis comes back (empty: nothing of the revocations survived in it).
    let _redis = Redis::start_on(port);
    let back = std::time::Instant::now();
    wait_until(
        "every replica to refuse every revoked token",
        std::time::Duration::from_secs(5),
        || tokens.iter().all(|t| status_of(&b, "/echo/x", t) == 401),
    );
    assert!(back.elapsed() < std::time::Duration::from_secs(5));
    // And the revocation is in Redis now, for replicas yet to start.
    let c = Gateway::start(&yaml, &env);
    for t in &tokens {
        assert_eq!(status_of(&c, "/echo/x", t), 401);
    }
}

#[test]
fn after_each_reload_that_changes_a_key_the_old_key_admits_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;
    let mock = Mock::start("m");
    let secrets: Vec<String> = (0..5)
        .map(|i| format!("rotating-secret-number-{i}-0123456789abcdef"))
        .collect();
    let env: Vec<(String, String)> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("SECRET_{i}"), s.clone()))
        .collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gw = Gateway::start(&fingerprint_config(&mock, None, "SECRET_0"), &env_ref);
    let tokens: Vec<String> = secrets.iter().map(|s| hs256(s, 70)).collect();
    // Under load: two clients keep presenting every key's token while the keys change; each
    // answer is recorded with the moment its request was sent.
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let seen: Mutex<Vec<(Instant, usize, u16)>> = Mutex::new(Vec::new());
    let reloaded: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let c = client_with_timeout(std::time::Duration::from_secs(5));
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let k = i % tokens.len();
                    i += 1;
                    let at = Instant::now();
                    if let Ok(r) = c.get(gw.url("/echo/x")).bearer_auth(&tokens[k]).send() {
                        seen.lock()
                            .expect("lock")
                            .push((at, k, r.status().as_u16()));
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        for i in 1..secrets.len() {
            let before = sent.load(Ordering::Relaxed);
            wait_until("load between reloads", WAIT, || {
                sent.load(Ordering::Relaxed) >= before + 20
            });
            std::fs::write(
                &gw.config,
                fingerprint_config(&mock, None, &format!("SECRET_{i}")),
            )
            .expect("write");
            let r = client()
                .post(gw.admin_url("/admin/reload"))
                .send()
                .expect("reload");
            assert_eq!(r.status(), 200);
            reloaded.lock().expect("lock").push(Instant::now());
        }
        let before = sent.load(Ordering::Relaxed);
        wait_until("load after the last reload", WAIT, || {
            sent.load(Ordering::Relaxed) >= before + 20
        });
        stop.store(true, Ordering::Relaxed);
    });
    let reloaded = reloaded.into_inner().expect("lock");
    let seen = seen.into_inner().expect("lock");
    // Key k is current from reload k (its answer) until reload k+1 is answered.
    for (at, k, status) in &seen {
        let retired_by = reloaded.get(*k);
        if *status == 200 {
            assert!(
                retired_by.is_none_or(|r| at <= r),
                "key {k} admitted a request sent after the reload that retired it"
            );
        }
    }
    // And the load really used the keys: the last key passes after its reload.
    assert!(seen
        .iter()
        .any(|(_, k, st)| *k == secrets.len() - 1 && *st == 200));
}

#[test]
fn a_revocation_subscription_that_stops_answering_is_noticed_and_re_established() {
    let mock = Mock::start("m");
    let redis = Redis::start();
    let yaml = format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
redis: {{ url: "{r}", command_timeout: 200ms }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id, required_claims: {{ token_type: access }} }}
routes: [{{ name: r, path_prefix: /echo/, auth: required, upstream: lms }}]
"#,
        r = redis.url(),
        m = mock.addr
    );
    let env = [("JWT_SECRET", MOCK_JWT_SECRET)];
    let a = Gateway::start(&yaml, &env);
    let b = Gateway::start(&yaml, &env);
    let token = tokens::sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": 80, "exp": tokens::now() + 600, "jti": "quiet", "token_type": "access"}),
    );
    assert_eq!(status_of(&b, "/echo/x", &token), 200);
    // Redis stops answering without closing anything, as behind a NAT that dropped the flow.
    let paused = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "CLIENT",
            "PAUSE",
            "4000",
            "ALL",
        ])
        .output()
        .expect("redis-cli");
    assert!(paused.status.success());
    wait_until("b to notice its subscription is dead", WAIT, || {
        b.proc
            .output()
            .contains("the subscription stopped answering")
    });
    // Once Redis answers again, b is subscribed again: a's revocation reaches it.
    wait_until("a's revocation to reach b", WAIT, || {
        let r = client()
            .post(a.admin_url("/admin/revoke"))
            .json(&json!({"jti": "quiet"}))
            .send()
            .expect("revoke");
        r.status() == 200 && status_of(&b, "/echo/x", &token) == 401
    });
}
