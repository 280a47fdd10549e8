//! Faults under load: Redis, the upstream, the JWKS endpoint and the introspection endpoint
//! fail while traffic runs, and the configuration reloads every second. Throughout, no
//! request gets a wrong auth decision and every error is one of the contract's; afterwards,
//! service recovers by itself.

use authgate_tests::tokens::{now, sign};
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ISS: &str = "https://issuer.test";

fn config(mock_port: u16, introspect: &str, redis: &Redis) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s }}
admin: {{ listen: "${{AG_ADMIN}}" }}
redis: {{ url: "{redis}", command_timeout: 100ms }}
upstreams: {{ lms: {{ endpoints: ["127.0.0.1:{mock_port}"], connect_timeout: 200ms }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id }}
    issuer: {{ type: jwt, algorithms: [RS256], jwks_url: "http://127.0.0.1:{mock_port}/.well-known/jwks.json", jwks_refresh: 1s, issuer: "{ISS}" }}
    knox: {{ type: introspection, url: "http://{introspect}/api/auth/introspect/", client_id: authgate, client_secret_env: INTROSPECTION_SECRET, timeout: 200ms }}
  cache: {{ negative_ttl: 1s }}
rate_limits:
  huge: {{ rate: 100000/s, burst: 100000, key: subject, scope: shared }}
routes:
  - {{ name: api, path_prefix: /echo/, auth: required, rate_limit: huge, deadline: 2s, upstream: lms }}
"#,
        redis = redis.url()
    )
}

/// A TCP relay to the mock that can be told to stall, standing in for a slow issuer.
struct SlowRelay {
    addr: std::net::SocketAddr,
    slow: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl SlowRelay {
    fn start(target: std::net::SocketAddr) -> SlowRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let slow = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (slow2, stop2) = (slow.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let slow = slow2.clone();
                        std::thread::spawn(move || relay(client, target, &slow));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SlowRelay { addr, slow, stop }
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(mut client: TcpStream, target: std::net::SocketAddr, slow: &AtomicBool) {
    let Ok(mut upstream) = TcpStream::connect(target) else {
        return;
    };
    client.set_nonblocking(false).ok();
    let mut c2 = client.try_clone().unwrap();
    let mut u2 = upstream.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut u2, &mut c2);
    });
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if slow.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1000));
        }
        if upstream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// What one kind of request may get back; anything else is a wrong decision or a non-contract
/// error.
#[derive(Clone, Copy, Debug)]
enum Class {
    GoodJwt,
    GoodJwks,
    GoodOpaque,
    Forged,
    UnknownOpaque,
    NoToken,
}

impl Class {
    const ALL: [Class; 6] = [
        Class::GoodJwt,
        Class::GoodJwks,
        Class::GoodOpaque,
        Class::Forged,
        Class::UnknownOpaque,
        Class::NoToken,
    ];

    /// Allowed (status, error code) pairs; `None` code means a proxied success.
    fn allowed(self, status: u16, code: Option<&str>) -> bool {
        let upstream_trouble = matches!(
            (status, code),
            (502, Some("upstream_unavailable")) | (504, Some("upstream_timeout"))
        );
        match self {
            Class::GoodJwt | Class::GoodJwks => status == 200 || upstream_trouble,
            Class::GoodOpaque => {
                status == 200
                    || upstream_trouble
                    || (status == 503 && code == Some("auth_unavailable"))
            }
            Class::Forged => status == 401 && code == Some("invalid_token"),
            Class::UnknownOpaque => {
                (status == 401 && code == Some("invalid_token"))
                    || (status == 503 && code == Some("auth_unavailable"))
            }
            Class::NoToken => status == 401 && code == Some("missing_token"),
        }
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    violations: Arc<Mutex<Vec<String>>>,
    sent: Arc<AtomicUsize>,
    /// Requests answered (or failed), so a fault can be held for a number of answers.
    answered: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn start_load(url: String, tokens: Arc<Vec<(Class, Option<String>)>>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let threads = (0..3)
        .map(|t| {
            let (stop, violations, sent, answered, tokens, url) = (
                stop.clone(),
                violations.clone(),
                sent.clone(),
                answered.clone(),
                tokens.clone(),
                url.clone(),
            );
            std::thread::spawn(move || {
                let c = client_with_timeout(Duration::from_secs(5));
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let (class, token) = &tokens[i % tokens.len()];
                    i += 1;
                    let mut req = c.get(&url);
                    if let Some(t) = token {
                        req = req.bearer_auth(t);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    match req.send() {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: Option<Value> = r.json().ok();
                            let code = body
                                .as_ref()
                                .and_then(|b| b["error"].as_str())
                                .map(str::to_owned);
                            let code = if status == 200 { None } else { code };
                            if !class.allowed(status, code.as_deref()) {
                                violations
                                    .lock()
                                    .unwrap()
                                    .push(format!("{class:?} -> {status} {code:?}"));
                            }
                        }
                        Err(e) => violations
                            .lock()
                            .unwrap()
                            .push(format!("{class:?} -> transport error {e}")),
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    Load {
        stop,
        violations,
        sent,
        answered,
        threads,
    }
}

impl Load {
    /// Returns once `answers` more requests have been answered: a fault is held for that many
    /// decisions, however fast or slow the machine is, not for a fixed time.
    fn through(&self, what: &str, answers: usize) {
        self.through_until(what, answers, || true);
    }

    /// As [`Load::through`], and until `effect` holds too: the fault has shown in the gateway
    /// (a Redis error counted, a JWKS fetch failed), so the window was not empty.
    fn through_until(&self, what: &str, answers: usize, mut effect: impl FnMut() -> bool) {
        let from = self.answered.load(Ordering::Relaxed);
        let mut seen = false;
        wait_until(what, Duration::from_secs(30), || {
            seen = seen || effect();
            seen && self.answered.load(Ordering::Relaxed) >= from + answers
        });
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.violations.lock().unwrap().clone(),
        )
    }
}

/// Every class answers as in normal service again within `limit`.
fn recovers(gw: &Gateway, tokens: &[(Class, Option<String>)], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let all_good = tokens.iter().all(|(class, token)| {
            let mut req = client().get(gw.url("/echo/check"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let status = req.send().map(|r| r.status().as_u16()).unwrap_or(0);
            match class {
                Class::GoodJwt | Class::GoodJwks | Class::GoodOpaque => status == 200,
                Class::Forged | Class::UnknownOpaque | Class::NoToken => status == 401,
            }
        });
        if all_good {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "service did not recover within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn faults_under_load_never_flip_an_auth_decision() {
    let mut redis = Redis::start();
    let redis_port = redis.port;
    let mock_port = free_port();
    let mut mock = Mock::start_on("m", mock_port, &[]);
    let relay = SlowRelay::start(mock.addr);
    let gw = Gateway::start(
        &config(mock_port, &relay.addr.to_string(), &redis),
        &[
            ("JWT_SECRET", MOCK_JWT_SECRET),
            ("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1),
        ],
    );
    gw.wait_ready();
    let opaque = |mock: &Mock, sub: &str| -> String {
        let v: Value = client()
            .post(mock.url("/__mock/opaque"))
            .json(&json!({"sub": sub, "ttl_s": 3600}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["token"].as_str().unwrap().to_string()
    };
    let tokens = Arc::new(vec![
        (
            Class::GoodJwt,
            Some(sign(
                Algorithm::HS256,
                MOCK_JWT_SECRET,
                None,
                &json!({"user_id": 1, "exp": now() + 3600}),
            )),
        ),
        (
            Class::GoodJwks,
            Some(sign(
                Algorithm::RS256,
                "rsa-1",
                Some("rsa-1"),
                &json!({"sub": "j", "exp": now() + 3600, "iss": ISS}),
            )),
        ),
        (Class::GoodOpaque, Some(opaque(&mock, "7"))),
        (
            Class::Forged,
            Some(sign(
                Algorithm::HS256,
                "not-the-secret",
                None,
                &json!({"user_id": 1, "exp": now() - 60}),
            )),
        ),
        (
            Class::UnknownOpaque,
            Some("00000000000000000000000000000000deadbeef".to_string()),
        ),
        (Class::NoToken, None),
    ]);
    assert_eq!(tokens.len(), Class::ALL.len());
    recovers(&gw, &tokens, Duration::from_secs(5));
    let load = start_load(gw.url("/echo/load"), tokens.clone());

    // Each fault is held until the gateway has felt it (a counter of its own moved) and for a
    // number of answers under load, not for a fixed time.
    const HOLD: usize = 60;
    let total = |name: &str, labels: &[(&str, &str)]| sum_metric(&gw.metrics(), name, labels);
    let rose = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let before = total(name, labels);
        move || total(name, labels) > before
    };
    load.through("load before the faults", HOLD);

    // Redis killed, then back on the same port.
    let redis_errors = rose("authgate_redis_errors_total", &[]);
    redis.proc.kill();
    load.through_until("answers without Redis", HOLD, redis_errors);
    let _redis2 = Redis::start_on(redis_port);
    load.through("answers after Redis is back", HOLD);

    // The upstream killed, then back on the same port (the JWKS and introspection go with it).
    let upstream_errors = rose("authgate_upstream_errors_total", &[("upstream", "lms")]);
    mock.proc.kill();
    load.through_until("answers without the upstream", HOLD, upstream_errors);
    // The identity provider comes back with its token store, as knox's database would: the
    // good opaque token is still good there. (Without it, a token cache cleared meanwhile,
    // as Redis's return clears it when the revocation channel is subscribed again, would
    // rightly make it 401.)
    let good_opaque = tokens
        .iter()
        .find_map(|(c, t)| matches!(c, Class::GoodOpaque).then(|| t.clone()))
        .flatten()
        .expect("a good opaque token");
    mock = Mock::start_on(
        "m",
        mock_port,
        &["--opaque-token", &format!("{good_opaque}:7")],
    );
    load.through("answers after the upstream is back", HOLD);

    // The JWKS endpoint failing: keys already loaded keep working.
    client()
        .post(mock.url("/__mock/jwks/fail?on=true"))
        .send()
        .unwrap();
    let jwks_failed = rose(
        "authgate_jwks_refresh_total",
        &[("provider", "issuer"), ("result", "error")],
    );
    load.through_until("answers while the JWKS fails", HOLD, jwks_failed);
    client()
        .post(mock.url("/__mock/jwks/fail?on=false"))
        .send()
        .unwrap();

    // The introspection endpoint slower than the provider's timeout.
    // The unknown opaque token's refusal is cached for negative_ttl (1 s); past it, it is
    // introspected again, through the stalled relay.
    let introspection_unavailable = rose(
        "authgate_auth_total",
        &[("provider", "knox"), ("outcome", "auth_unavailable")],
    );
    relay.slow.store(true, Ordering::Relaxed);
    load.through_until(
        "answers while introspection is slow",
        HOLD / 2,
        introspection_unavailable,
    );
    relay.slow.store(false, Ordering::Relaxed);

    // Reloads under load.
    let reloaded = || {
        metric(
            &gw.metrics(),
            "authgate_config_reloads_total",
            &[("result", "ok")],
        )
    };
    for n in 1..=3 {
        gw.proc.signal(nix::sys::signal::Signal::SIGHUP);
        wait_until("the reload", Duration::from_secs(10), || {
            reloaded() >= f64::from(n)
        });
        load.through("answers after a reload", HOLD);
    }
    let (sent, violations) = load.finish();
    assert!(sent > 100, "only {sent} requests were sent");
    assert!(
        violations.is_empty(),
        "{} wrong answers out of {sent}, e.g. {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );

    // Recovery: the opaque token was issued by the first mock; issue one from the new mock.
    let mut after: Vec<(Class, Option<String>)> = tokens
        .iter()
        .filter(|(c, _)| !matches!(c, Class::GoodOpaque))
        .cloned()
        .collect();
    after.push((Class::GoodOpaque, Some(opaque(&mock, "8"))));
    recovers(&gw, &after, Duration::from_secs(10));
    assert_eq!(reloaded(), 3.0);
}

/// The sum of every series of `name` whose labels include `labels`.
fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}
