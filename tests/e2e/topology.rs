//! Redis beyond one server: a Sentinel-monitored master and a Redis Cluster, real
//! `redis-server` processes started here, reached as an ACL user (the default user is off). Every use of Redis works in each (shared limits,
//! the token cache, revocations and their events), and when a master dies under load the
//! gateway keeps answering by the Redis-down rules, then follows the promoted replica.

use authgate_tests::tokens::{now, sign};
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config(mock: &Mock, redis: &str) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s }}
admin: {{ listen: "${{AG_ADMIN}}" }}
redis: {{ {redis}, command_timeout: 100ms }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id }}
rate_limits:
  team: {{ rate: 1/m, burst: 5, key: "header:X-Team", scope: shared }}
  huge: {{ rate: 100000/s, burst: 100000, key: subject, scope: shared }}
routes:
  - {{ name: logout, path: /echo/logout/, methods: [POST], auth: required, revokes_token: true, upstream: lms }}
  - {{ name: team, path_prefix: /echo/team/, auth: none, rate_limit: team, upstream: lms }}
  - {{ name: load, path_prefix: /echo/load/, auth: required, rate_limit: huge, upstream: lms }}
  - {{ name: r, path_prefix: /echo/, auth: required, upstream: lms }}
"#,
        m = mock.addr
    )
}

fn env() -> [(&'static str, &'static str); 3] {
    [
        ("JWT_SECRET", MOCK_JWT_SECRET),
        ("REDIS_PASSWORD", ACL_PASS),
        ("SENTINEL_PASSWORD", SENTINEL_PASS),
    ]
}

fn token(uid: u64, jti: &str) -> String {
    sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": uid, "exp": now() + 600, "iat": now(), "jti": jti}),
    )
}

fn get(gw: &Gateway, path: &str, bearer: Option<&str>, team: Option<&str>) -> u16 {
    let mut req = client().get(gw.url(path));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(t) = team {
        req = req.header("X-Team", t);
    }
    req.send().expect("send").status().as_u16()
}

/// A shared burst of 5 spent alternately on the gateways: exactly 5, then 429 on each.
fn assert_exact_shared_burst(gateways: &[&Gateway], team: &str) {
    let statuses: Vec<u16> = (0..8)
        .map(|i| {
            get(
                gateways[i % gateways.len()],
                "/echo/team/x",
                None,
                Some(team),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "team {team}: a shared burst of 5 across {} gateways",
        gateways.len()
    );
}

/// The status of a logout (a `revokes_token` route) with `token`.
fn logout(gw: &Gateway, token: &str) -> u16 {
    client()
        .post(gw.url("/echo/logout/"))
        .bearer_auth(token)
        .send()
        .expect("logout")
        .status()
        .as_u16()
}

/// Waits for the sentinels to promote the replica, then (within `writes_within`) for both
/// gateways to write to it: two new buckets, one per gateway, show up on the new master.
fn wait_for_the_promotion(s: &RedisSentinel, a: &Gateway, b: &Gateway, writes_within: Duration) {
    wait_until(
        "the sentinels to promote the replica",
        Duration::from_secs(20),
        || s.master_port() == Some(s.replica.port),
    );
    wait_until(
        "both gateways to write to the promoted replica",
        writes_within,
        || {
            let before = keys_on(s.replica.port, "authgate:rl:team:*").len();
            let stamp = format!("{}-{}", now(), before);
            get(a, "/echo/team/x", None, Some(&format!("a-{stamp}"))) == 200
                && get(b, "/echo/team/x", None, Some(&format!("b-{stamp}"))) == 200
                && keys_on(s.replica.port, "authgate:rl:team:*").len() >= before + 2
        },
    );
}

/// A token is cached on `reader` (its first use), revoked through `writer`; `reader` refuses
/// it soon after, which only the revocation event (or the revocation key) can tell it.
fn assert_revocation_reaches(writer: &Gateway, reader: &Gateway, uid: u64, jti: &str) {
    let t = token(uid, jti);
    assert_eq!(get(reader, "/echo/me", Some(&t), None), 200);
    assert_eq!(get(reader, "/echo/me", Some(&t), None), 200, "now cached");
    assert_eq!(logout(writer, &t), 200, "logout of {jti}");
    assert_eq!(get(writer, "/echo/me", Some(&t), None), 401);
    wait_until(
        &format!("{jti}, revoked on one gateway, to be refused by the other"),
        Duration::from_secs(10),
        || get(reader, "/echo/me", Some(&t), None) == 401,
    );
}

/// Requests that run until stopped (stopped on drop too, should a test fail first), over 50
/// subjects per thread on a shared limit with a large burst (so tokens are reserved and held
/// across the failover), keeping every status seen.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<u16>>>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(urls: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads = urls
            .into_iter()
            .enumerate()
            .map(|(n, url)| {
                let (stop, seen, answered) = (stop.clone(), seen.clone(), answered.clone());
                std::thread::spawn(move || {
                    let c = client_with_timeout(Duration::from_secs(5));
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let t = token(1_000_000 * (n as u64 + 1) + i % 50, "load");
                        let status = c
                            .get(&url)
                            .bearer_auth(&t)
                            .send()
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0);
                        seen.lock().expect("seen").insert(status);
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            answered,
            threads,
        }
    }

    /// Returns once the load has had `n` answers: it is running, not just started.
    fn running(&self, n: usize) {
        wait_until("the load to run", Duration::from_secs(20), || {
            self.answered.load(Ordering::Relaxed) >= n
        });
    }

    fn finish(mut self) -> BTreeSet<u16> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join().expect("load thread");
        }
        let seen = self.seen.lock().expect("seen").clone();
        seen
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Keys under the prefix on one node.
fn keys_on(port: u16, pattern: &str) -> Vec<String> {
    acl_cli(port, &["--scan", "--pattern", pattern])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn sentinel_every_use_then_a_failover_under_load() {
    let mut s = RedisSentinel::start();
    let mock = Mock::start("m");
    let yaml = config(&mock, &s.yaml());
    let a = Gateway::start(&yaml, &env());
    let b = Gateway::start(&yaml, &env());

    assert_exact_shared_burst(&[&a, &b], "blue");
    assert!(!keys_on(s.master.port, "authgate:rl:team:*").is_empty());
    crate::dpop::assert_a_proof_is_spent_across(&s.yaml());
    assert_eq!(get(&a, "/echo/me", Some(&token(7, "t7")), None), 200);
    assert!(
        !keys_on(s.master.port, "authgate:tok:*").is_empty(),
        "the token cache's shared tier lives on the master"
    );
    assert_revocation_reaches(&a, &b, 8, "before-failover");

    // The master dies while both gateways are busy.
    let load = Load::start(vec![a.url("/echo/load/x"), b.url("/echo/load/x")]);
    load.running(20);
    s.master.proc.kill();
    // A revocation while there is no master: kept, and stored once there is one again.
    let old_token = token(77, "issued-before");
    assert_eq!(get(&b, "/echo/me", Some(&old_token), None), 200);
    let r = client()
        .post(a.admin_url("/admin/revoke"))
        .json(&json!({"subject": "77"}))
        .send()
        .expect("revoke");
    assert_eq!(r.status(), 202, "pending while no master answers");
    assert_eq!(
        get(&a, "/echo/me", Some(&old_token), None),
        401,
        "applied here at once"
    );
    wait_for_the_promotion(&s, &a, &b, Duration::from_secs(10));
    let seen = load.finish();
    // Throughout: answers by the rules (the local fallback allowed these), never an error.
    assert_eq!(
        seen,
        BTreeSet::from([200]),
        "statuses under load across the failover"
    );

    assert_exact_shared_burst(&[&a, &b], "green");
    assert_revocation_reaches(&b, &a, 9, "after-failover");
    wait_until(
        "the revocation made without a master to reach the other gateway",
        Duration::from_secs(10),
        || get(&b, "/echo/me", Some(&old_token), None) == 401,
    );
    assert_eq!(
        acl_cli(s.replica.port, &["EXISTS", "authgate:revoked-subject:77"]),
        "1",
        "stored on the new master"
    );
    let text = a.metrics();
    assert!(
        metric(
            &text,
            "authgate_rate_limit_fallbacks_total",
            &[("policy", "huge")]
        ) >= 1.0,
        "the gap was bridged by the local limiter"
    );
}

/// A master that freezes instead of dying (a stopped process, a paused VM: the kernel still
/// accepts connections, nothing answers). Each gateway must give up on it everywhere, the
/// revocation listener included, and subscribe on the promoted replica. Whether a listener
/// ever tries the frozen node again depends on when its follower hears of the failover; the
/// bound on that wait is tested in `auth::revoke` against a node that never answers.
#[test]
fn sentinel_a_frozen_master_then_a_failover() {
    let s = RedisSentinel::start();
    let mock = Mock::start("m");
    let yaml = config(&mock, &s.yaml());
    let a = Gateway::start(&yaml, &env());
    let b = Gateway::start(&yaml, &env());
    for gw in [&a, &b] {
        wait_until(
            "both listeners to subscribe",
            Duration::from_secs(10),
            || gw.proc.output().contains(SUBSCRIBED),
        );
    }
    assert_revocation_reaches(&a, &b, 30, "before-freeze");

    s.master.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    wait_for_the_promotion(&s, &a, &b, Duration::from_secs(15));
    // Each listener lost the frozen subscription, said so, and subscribed on the new master
    // (a listener still waiting on the frozen node never would).
    let on_new_master = format!(r#""node":"127.0.0.1:{}""#, s.replica.port);
    for gw in [&a, &b] {
        wait_until(
            "the listener to subscribe on the promoted replica",
            Duration::from_secs(15),
            || {
                gw.proc
                    .output()
                    .lines()
                    .any(|l| l.contains(SUBSCRIBED) && l.contains(&on_new_master))
            },
        );
        assert!(
            gw.proc.output().contains(NOT_SUBSCRIBED),
            "the gap is logged"
        );
    }
    assert_revocation_reaches(&b, &a, 31, "after-freeze");
    assert_revocation_reaches(&a, &b, 32, "after-freeze-back");
}

const SUBSCRIBED: &str = "revocation events: subscribed";
const NOT_SUBSCRIBED: &str = "revocation events: not subscribed";

/// A replica whose Redis user may not subscribe (Redis 7 gives an ACL user no channels unless
/// told, `acl-pubsub-default resetchannels`) never hears revocation events. It must not trust
/// its local token cache then: a token revoked through another replica is refused on its
/// next request, found from the stored revocation.
#[test]
fn a_replica_that_cannot_subscribe_checks_every_identity_with_redis() {
    let r = Redis::start_acl();
    let pass = format!(">{ACL_PASS}");
    acl_cli(
        r.port,
        &[
            "ACL",
            "SETUSER",
            "nosub",
            "on",
            &pass,
            "~*",
            "+@all",
            "resetchannels",
        ],
    );
    let mock = Mock::start("m");
    let redis_as = |user: &str| {
        format!(
            r#"url: "redis://127.0.0.1:{}", username: {user}, password_env: REDIS_PASSWORD"#,
            r.port
        )
    };
    let a = Gateway::start(&config(&mock, &redis_as("nosub")), &env());
    let b = Gateway::start(&config(&mock, &redis_as(ACL_USER)), &env());
    wait_until(
        "a to find it may not subscribe",
        Duration::from_secs(10),
        || a.proc.output().contains(NOT_SUBSCRIBED),
    );
    wait_until("b to subscribe", Duration::from_secs(10), || {
        b.proc.output().contains(SUBSCRIBED)
    });
    let t = token(40, "no-events");
    assert_eq!(get(&a, "/echo/me", Some(&t), None), 200);
    assert_eq!(get(&a, "/echo/me", Some(&t), None), 200);
    assert_eq!(logout(&b, &t), 200);
    assert_eq!(
        get(&a, "/echo/me", Some(&t), None),
        401,
        "refused at once, from the stored revocation (no event can reach a)"
    );
    assert!(!a.proc.output().contains(SUBSCRIBED), "a never subscribed");
}

#[test]
fn cluster_every_use_across_slots_then_a_master_lost_under_load() {
    let mut cluster = RedisCluster::start();
    let mock = Mock::start("m");
    let yaml = config(&mock, &cluster.yaml());
    let a = Gateway::start(&yaml, &env());
    let b = Gateway::start(&yaml, &env());

    // Keys on every master: several buckets and tokens, which hash to different slots.
    for team in ["red", "orange", "yellow"] {
        assert_exact_shared_burst(&[&a, &b], team);
    }
    crate::dpop::assert_a_proof_is_spent_across(&cluster.yaml());
    for uid in 0..12 {
        assert_eq!(get(&a, "/echo/me", Some(&token(100 + uid, "c")), None), 200);
    }
    let holding: Vec<usize> = cluster
        .masters()
        .into_iter()
        .filter(|&i| !keys_on(cluster.nodes[i].port, "authgate:*").is_empty())
        .collect();
    assert!(
        holding.len() >= 2,
        "keys spread over the masters: {holding:?}"
    );
    // Events reach a gateway whichever node each one is connected to.
    for (i, jti) in ["ev-1", "ev-2", "ev-3", "ev-4"].into_iter().enumerate() {
        assert_revocation_reaches(&a, &b, 200 + i as u64, jti);
    }
    // A revocation another gateway stored, found by one that never saw the token (three keys
    // on three slots, asked one by one). The token was issued before it.
    let issued_before = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": 300, "exp": now() + 600, "iat": now() - 5, "jti": "old"}),
    );
    let r = client()
        .post(a.admin_url("/admin/revoke"))
        .json(&json!({"subject": "300"}))
        .send()
        .expect("revoke");
    assert_eq!(r.status(), 200);
    let c = Gateway::start(&yaml, &env());
    assert_eq!(get(&c, "/echo/me", Some(&issued_before), None), 401);
    for gw in [&a, &b, &c] {
        let text = gw.metrics();
        for op in [
            "ratelimit",
            "cache_get",
            "cache_set",
            "revoke",
            "revoke_check",
            "publish",
        ] {
            assert_eq!(
                metric(&text, "authgate_redis_errors_total", &[("op", op)]),
                0.0,
                "{op}: no command refused by the cluster (CROSSSLOT, MOVED left unfollowed)"
            );
        }
    }

    // One master dies under load; its replica takes over its slots.
    let load = Load::start(vec![a.url("/echo/load/x"), b.url("/echo/load/x")]);
    load.running(20);
    let victim = cluster.masters()[0];
    cluster.nodes[victim].proc.kill();
    wait_until("a replica to take over", Duration::from_secs(20), || {
        let live: Vec<usize> = cluster
            .masters()
            .into_iter()
            .filter(|&i| i != victim)
            .collect();
        live.len() == 3
    });
    cluster.wait_healthy();
    wait_until(
        "the gateways to use the new topology for every slot",
        Duration::from_secs(15),
        || {
            // Buckets on every slot range, on each gateway, and none of them falls back.
            let fallbacks = |gw: &Gateway| {
                metric(
                    &gw.metrics(),
                    "authgate_rate_limit_fallbacks_total",
                    &[("policy", "team")],
                )
            };
            let before = [fallbacks(&a), fallbacks(&b)];
            let stamp = format!("{}-{}", now(), before[0]);
            let all_ok = (0..12).all(|k| {
                get(&a, "/echo/team/x", None, Some(&format!("a{stamp}-{k}"))) == 200
                    && get(&b, "/echo/team/x", None, Some(&format!("b{stamp}-{k}"))) == 200
            });
            all_ok && [fallbacks(&a), fallbacks(&b)] == before
        },
    );
    let seen = load.finish();
    assert_eq!(
        seen,
        BTreeSet::from([200]),
        "statuses under load across the failover"
    );
    assert_exact_shared_burst(&[&a, &b], "violet");
    assert_revocation_reaches(&b, &a, 400, "after-failover");
}

#[test]
fn a_cluster_over_tls_as_an_acl_user() {
    let dir = TestDir::new("cluster-tls");
    let ca = certs::new_ca("redis cluster test ca");
    certs::issue(&ca, &dir.0, "server.pem", "server.key");
    std::fs::write(dir.path("ca.pem"), ca.cert.pem()).expect("write");
    let cluster = RedisCluster::start_tls(&dir.0);
    let mock = Mock::start("m");
    let redis = format!(
        "{}, tls: true, ca_file: {}/ca.pem",
        cluster.yaml(),
        dir.0.display()
    );
    let yaml = config(&mock, &redis);
    let a = Gateway::start(&yaml, &env());
    let b = Gateway::start(&yaml, &env());
    for team in ["red", "blue"] {
        assert_exact_shared_burst(&[&a, &b], team);
    }
    assert_revocation_reaches(&a, &b, 500, "tls-1");
    assert_revocation_reaches(&b, &a, 501, "tls-2");
    let cached: usize = cluster
        .nodes
        .iter()
        .map(|n| {
            cluster
                .cli(n.port, &["--scan", "--pattern", "authgate:tok:*"])
                .lines()
                .count()
        })
        .sum();
    assert!(cached >= 1, "cached identities in the cluster");
    for gw in [&a, &b] {
        let text = gw.metrics();
        assert_eq!(
            metric(&text, "authgate_redis_errors_total", &[("op", "ratelimit")]),
            0.0
        );
    }

    // Without the CA, the nodes' certificate is not trusted: no command gets through, and the
    // limit falls back to local rather than fail open or shut.
    let untrusted = config(&mock, &format!("{}, tls: true", cluster.yaml()));
    let c = Gateway::start(&untrusted, &env());
    assert_eq!(get(&c, "/echo/team/x", None, Some("green")), 200);
    let text = c.metrics();
    assert!(metric(&text, "authgate_redis_errors_total", &[("op", "ratelimit")]) >= 1.0);
    assert!(
        metric(
            &text,
            "authgate_rate_limit_fallbacks_total",
            &[("policy", "team")]
        ) >= 1.0
    );
}
