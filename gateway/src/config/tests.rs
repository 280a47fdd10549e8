use super::*;
use crate::config::model::{NodeAddr, RedisTopology};
use std::collections::HashMap;

fn env() -> HashMap<String, String> {
    HashMap::from([
        ("JWT_SECRET".to_string(), "s3cret".to_string()),
        ("INTROSPECTION_SECRET".to_string(), "introspect".to_string()),
        ("AUTHGATE_ADMIN_TOKEN".to_string(), "admin".to_string()),
        (
            "REDIS_URL".to_string(),
            "redis://127.0.0.1:6379/0".to_string(),
        ),
    ])
}

fn load(text: &str) -> Result<Config, Vec<ConfigError>> {
    load_str(text, Path::new("."), &env())
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e,
    }
}

const MINIMAL: &str = "
upstreams:
  lms: { endpoints: ['127.0.0.1:8000'] }
routes:
  - { name: all, path_prefix: /, auth: none, upstream: lms }
";

#[test]
fn every_example_in_config_dir_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let base = path.parent().expect("dir");
        if let Err(e) = load_str(&text, base, &env()) {
            panic!("{} failed to load: {}", path.display(), ConfigErrors(e));
        }
        n += 1;
    }
    assert!(n >= 1, "no examples found in {}", dir.display());
}

#[test]
fn minimal_file_gets_defaults() {
    let c = load(MINIMAL).expect("loads");
    assert_eq!(c.server.listen, vec!["0.0.0.0:8080".to_string()]);
    assert_eq!(c.server.max_request_body, 10 << 20);
    assert_eq!(c.server.grace_period, std::time::Duration::from_secs(10));
    assert_eq!(c.admin.listen, "127.0.0.1:9090");
    assert!(c.redis.is_none());
    assert_eq!(c.routes[0].auth, model::RouteAuth::None);
    assert!(c.routes[0].forward_authorization);
}

#[test]
fn route_without_auth_requires_it() {
    let text = "
upstreams: { lms: { endpoints: ['127.0.0.1:8000'] } }
auth:
  providers:
    k: { type: api_key, keys: [{ id: a, sha256: '0000000000000000000000000000000000000000000000000000000000000000', subject: s }] }
routes:
  - { name: api, path_prefix: /api/, upstream: lms }
";
    let c = load(text).expect("loads");
    assert!(matches!(
        c.routes[0].auth,
        model::RouteAuth::Required { .. }
    ));
}

#[test]
fn unknown_key_names_path_and_position() {
    let errs = errors(
        "
upstreams:
  lms:
    endpoints: ['127.0.0.1:8000']
    conect_timeout: 1s
routes:
  - { name: all, path_prefix: /, auth: none, upstream: lms }
",
    );
    assert_eq!(errs[0].path, "upstreams.lms.conect_timeout");
    assert!(
        errs[0].message.contains("unknown field `conect_timeout`"),
        "{}",
        errs[0]
    );
    assert_eq!(errs[0].location.map(|l| l.0), Some(5));
}

#[test]
fn bad_values_name_their_paths() {
    let errs = errors(
        "
server: { grace_period: 10 sec }
upstreams:
  lms: { endpoints: ['127.0.0.1:8000'] }
rate_limits:
  a: { rate: 10/week, burst: 1, key: client_ip }
routes:
  - { name: all, path_prefix: /, auth: none, upstream: lms }
",
    );
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"server.grace_period"), "{paths:?}");
    assert!(paths.contains(&"rate_limits.a.rate"), "{paths:?}");
    assert!(errs.iter().any(|e| e.message.contains("invalid duration")));
    assert!(errs.iter().any(|e| e.message.contains("invalid rate")));
    let size = errors(
        "
server: { max_request_body: 10 parsecs }
upstreams: { lms: { endpoints: ['127.0.0.1:8000'] } }
routes: [{ name: all, path_prefix: /, auth: none, upstream: lms }]
",
    );
    assert_eq!(size[0].path, "server.max_request_body");
}

#[test]
fn semantic_errors_are_all_reported() {
    let errs = errors(
        "
upstreams:
  lms: { endpoints: [] }
  other: { endpoints: ['nohost'] }
rate_limits:
  user: { rate: 10/s, burst: 0, key: subject }
routes:
  - { name: a, path_prefix: /a/, auth: none, upstream: nope }
  - { name: b, path_prefix: /b/, auth: { providers: [ghost] }, upstream: lms }
  - { name: c, path_prefix: /c/, auth: none, rate_limit: [user, ghost], upstream: lms }
  - { name: c, path: /d//x, auth: none, upstream: lms }
  - { name: e, path: /e, path_prefix: /e, auth: none, upstream: lms }
",
    );
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "upstreams.lms.endpoints",
        "upstreams.other.endpoints[0]",
        "rate_limits.user.burst",
        "routes[0].upstream",
        "routes[1].auth.providers[0]",
        "routes[2].rate_limit[1]",
        "routes[3].name",
        "routes[3].path",
        "routes[4]",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}

#[test]
fn several_structural_errors_are_reported_together() {
    let errs = errors(
        "
upstreams:
  lms: { endpoints: ['127.0.0.1:8000'], bogus: 1 }
routes:
  - { name: a, path_prefix: /a/, auth: none, upstream: lms, colour: red }
  - { name: b, path_prefix: /b/, auth: sometimes, upstream: lms }
",
    );
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"upstreams.lms.bogus"), "{paths:?}");
    assert!(paths.contains(&"routes[0].colour"), "{paths:?}");
    assert!(
        paths.iter().any(|p| p.starts_with("routes[1]")),
        "{paths:?}"
    );
}

#[test]
fn secrets_and_algorithms() {
    let errs = errors(
        "
upstreams: { lms: { endpoints: ['127.0.0.1:8000'] } }
auth:
  providers:
    j:
      type: jwt
      algorithms: [none, HS256, XX999]
      keys: [{ secret_env: NOT_SET_ANYWHERE }]
    k:
      type: jwt
      algorithms: [RS256]
      keys: [{ secret_env: JWT_SECRET }]
routes: [{ name: a, path_prefix: /, upstream: lms }]
",
    );
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(
        has("auth.providers.j.algorithms[0]: \"none\" is never accepted"),
        "{text:?}"
    );
    assert!(
        has("auth.providers.j.algorithms[2]: unknown algorithm"),
        "{text:?}"
    );
    assert!(
        has(
            "auth.providers.j.keys[0].secret_env: environment variable NOT_SET_ANYWHERE is not set"
        ),
        "{text:?}"
    );
    assert!(
        has("auth.providers.k.keys[0]: this is an HMAC secret key but no algorithm"),
        "{text:?}"
    );
    // The secret's value never appears in an error.
    assert!(!text.iter().any(|t| t.contains("s3cret")));
}

#[test]
fn env_expansion_applies_before_parsing() {
    let text = "
upstreams: { lms: { endpoints: ['${UPSTREAM:-127.0.0.1:8000}'] } }
redis: { url: '${REDIS_URL}' }
routes: [{ name: a, path_prefix: /, auth: none, upstream: lms }]
";
    let c = load(text).expect("loads");
    assert_eq!(c.upstreams[0].endpoints, vec!["127.0.0.1:8000".to_string()]);
    assert_eq!(
        c.redis.as_ref().map(|r| match &r.topology {
            RedisTopology::Single { url } => url.expose().to_vec(),
            other => panic!("{other:?}"),
        }),
        Some(b"redis://127.0.0.1:6379/0".to_vec())
    );
    let errs = errors("upstreams: { lms: { endpoints: ['${NOPE}'] } }\nroutes: []\n");
    assert!(errs[0].message.contains("NOPE"));
    assert_eq!(errs[0].location, Some((1, 34)));
}

#[test]
fn redis_is_one_server_a_sentinel_master_or_a_cluster() {
    let with = |block: &str| load(&format!("redis: {block}\n{MINIMAL}"));
    let c = with("{ sentinel: { master: mymaster, nodes: ['10.0.0.5:26379', '[::1]:26380', 's.example:26379'] }, username: gw, password_env: JWT_SECRET, tls: true }")
        .expect("sentinel loads");
    let r = c.redis.expect("redis");
    match &r.topology {
        RedisTopology::Sentinel {
            master,
            nodes,
            password,
        } => {
            assert_eq!(master, "mymaster");
            assert_eq!(
                nodes[1],
                NodeAddr {
                    host: "::1".into(),
                    port: 26380
                }
            );
            assert_eq!(nodes[2].host, "s.example");
            assert!(password.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.username.as_deref(), Some("gw"));
    assert_eq!(
        r.password.as_ref().map(|p| p.expose().to_vec()),
        Some(b"s3cret".to_vec())
    );
    assert!(r.tls);
    let c = with("{ cluster: { nodes: ['127.0.0.1:7000'] } }").expect("cluster loads");
    assert_eq!(c.redis.expect("redis").mode(), "cluster");

    // Settings that change the connection change the fingerprint (secrets only hashed in).
    let fp = |block: &str| {
        with(block)
            .expect("loads")
            .redis
            .expect("redis")
            .fingerprint()
    };
    let base = "{ cluster: { nodes: ['127.0.0.1:7000'] } }";
    assert_eq!(fp(base), fp(base));
    assert_ne!(fp(base), fp("{ cluster: { nodes: ['127.0.0.1:7001'] } }"));
    assert_ne!(
        fp(base),
        fp("{ cluster: { nodes: ['127.0.0.1:7000'] }, password_env: JWT_SECRET }")
    );
    assert!(!fp("{ url: 'redis://:s3cret@h:1/0' }").contains("s3cret"));

    for (block, path, says) in [
        (
            "{ url: 'redis://h:1/0', cluster: { nodes: ['h:1'] } }",
            "redis",
            "exactly one",
        ),
        ("{ key_prefix: 'x:' }", "redis", "exactly one"),
        (
            "{ cluster: { nodes: [] } }",
            "redis.cluster.nodes",
            "at least one",
        ),
        (
            "{ cluster: { nodes: ['h'] } }",
            "redis.cluster.nodes[0]",
            "host:port",
        ),
        (
            "{ cluster: { nodes: ['h:0'] } }",
            "redis.cluster.nodes[0]",
            "host:port",
        ),
        (
            "{ cluster: { nodes: ['redis://h:1'] } }",
            "redis.cluster.nodes[0]",
            "host:port",
        ),
        (
            "{ cluster: { nodes: ['h:1', 'h:1'] } }",
            "redis.cluster.nodes[1]",
            "twice",
        ),
        (
            "{ sentinel: { master: '', nodes: ['h:1'] } }",
            "redis.sentinel.master",
            "name",
        ),
        (
            "{ sentinel: { master: m, nodes: ['h:1'], password_env: NOPE } }",
            "redis.sentinel.password_env",
            "NOPE",
        ),
        (
            "{ cluster: { nodes: ['h:1'] }, password_env: NOPE }",
            "redis.password_env",
            "NOPE",
        ),
        (
            "{ cluster: { nodes: ['h:1'] }, username: gw }",
            "redis.username",
            "password_env",
        ),
        (
            "{ url: 'redis://h:1/0', tls: true }",
            "redis.tls",
            "rediss://",
        ),
        (
            "{ cluster: { nodes: ['h:1'] }, ca_file: x.pem }",
            "redis.ca_file",
            "TLS",
        ),
    ] {
        let errs = with(block).expect_err(block);
        assert!(
            errs.iter()
                .any(|e| e.path == path && e.message.contains(says)),
            "{block}: {errs:?}"
        );
    }
}

#[test]
fn shared_scope_needs_redis_and_defaults_follow_redis() {
    let base = "
upstreams: { lms: { endpoints: ['127.0.0.1:8000'] } }
rate_limits: { a: { rate: 1/s, burst: 1, key: client_ip } }
routes: [{ name: a, path_prefix: /, auth: none, rate_limit: a, upstream: lms }]
";
    let c = load(base).expect("loads");
    assert_eq!(c.rate_limits[0].scope, raw::LimitScope::Local);
    let with_redis = format!("{base}redis: {{ url: 'redis://127.0.0.1:1/0' }}\n");
    let c = load(&with_redis).expect("loads");
    assert_eq!(c.rate_limits[0].scope, raw::LimitScope::Shared);
    let errs = errors(&base.replace("key: client_ip", "key: client_ip, scope: shared"));
    assert_eq!(errs[0].path, "rate_limits.a.scope");
}

#[test]
fn missing_required_sections() {
    let errs = errors("server: { threads: 1 }\n");
    assert!(errs[0].message.contains("missing field"), "{}", errs[0]);
    assert!(errors("upstreams: {}\nroutes: []\n").len() >= 2);
    assert!(!errors("not: [valid").is_empty());
}

#[test]
fn what_start_up_would_refuse_is_refused_by_check_too() {
    // A Redis URL the client cannot use, named without quoting it (it may hold a password).
    let e = errors(&format!(
        "redis: {{ url: 'redis://:secret@host:notaport/0' }}\n{MINIMAL}"
    ));
    let redis = e
        .iter()
        .find(|e| e.path == "redis.url")
        .expect("redis.url error");
    assert!(!redis.message.contains("secret"), "{}", redis.message);
    // A TLS listener whose files hold no certificate.
    let dir = std::env::temp_dir().join(format!("authgate-cfg-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("c.pem"), "not a certificate").expect("write");
    std::fs::write(dir.join("k.pem"), "not a key").expect("write");
    let e = errors(&format!(
        "server: {{ tls: {{ listen: '127.0.0.1:8443', cert_file: {d}/c.pem, key_file: {d}/k.pem }} }}\n{MINIMAL}",
        d = dir.display()
    ));
    assert!(e.iter().any(|e| e.path == "server.tls"), "{e:?}");
}

#[test]
fn upstream_assertion_is_compiled_with_its_key() {
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("../upstream-mock/keys");
    let with = |block: &str| {
        let text = format!("{MINIMAL}upstream_assertion:\n{block}");
        load_str(&text, &keys, &env())
    };
    let c = with("  algorithm: EdDSA\n  key_file: ed-1.key.pem\n  issuer: https://gw\n")
        .expect("loads");
    let a = c.upstream_assertion.expect("assertion");
    assert_eq!(a.header.as_str(), "x-auth-assertion");
    assert_eq!(a.ttl, std::time::Duration::from_secs(60));
    assert_eq!(a.key.kid().len(), 43);

    let problems = |block: &str| -> String {
        match with(block) {
            Ok(_) => panic!("expected errors for {block}"),
            Err(e) => ConfigErrors(e).to_string(),
        }
    };
    // The wrong curve for the algorithm, found by `check`, not at the first request.
    let e = problems("  algorithm: ES256\n  key_file: ed-1.key.pem\n  issuer: https://gw\n");
    assert!(
        e.contains("upstream_assertion.key_file") && e.contains("P-256"),
        "{e}"
    );
    let e = problems(
        "  algorithm: EdDSA\n  key_file: ed-1.key.pem\n  issuer: https://gw\n  ttl: 10m\n",
    );
    assert!(e.contains("upstream_assertion.ttl"), "{e}");
    let e = problems(
        "  algorithm: EdDSA\n  key_file: ed-1.key.pem\n  issuer: https://gw\n  header: X-Forwarded-User\n",
    );
    assert!(e.contains("upstream_assertion.header"), "{e}");
    let e = problems("  algorithm: EdDSA\n  key_env: NOPE\n  issuer: https://gw\n");
    assert!(e.contains("NOPE is not set"), "{e}");
    let e = problems("  algorithm: HS256\n  key_file: ed-1.key.pem\n  issuer: https://gw\n");
    assert!(e.contains("upstream_assertion"), "{e}");
    let e = problems(
        "  algorithm: EdDSA\n  key_file: ed-1.key.pem\n  key_env: JWT_SECRET\n  issuer: https://gw\n",
    );
    assert!(e.contains("exactly one of key_file, key_env"), "{e}");
}

#[test]
fn route_claim_rules_are_compiled_once() {
    let base = "
upstreams:
  lms: { endpoints: ['127.0.0.1:8000'] }
auth:
  providers:
    p: { type: jwt, algorithms: [HS256], keys: [{ secret_env: JWT_SECRET }], audience: [a] }
routes:
  - name: r
    path_prefix: /
    upstream: lms
    auth:
      providers: [p]
      mode: shadow
      claims:
";
    let c = load(&format!(
        "{base}        is_staff: true\n        realm_access.roles: [a, b]\n"
    ))
    .expect("loads");
    let r = &c.routes[0];
    assert_eq!(r.auth_mode, model::AuthMode::Shadow);
    assert_eq!(r.claims.len(), 2);
    assert_eq!(&*r.claims[1].path.name, "realm_access.roles");
    assert_eq!(r.claims[1].path.segments.len(), 2);
    assert_eq!(
        r.claims[1].allowed,
        vec![serde_json::json!("a"), serde_json::json!("b")]
    );
    for (bad, why) in [
        ("        a..b: 1\n", "single dots"),
        ("        a: []\n", "at least one"),
        ("        a: { b: 1 }\n", "strings, numbers or booleans"),
        ("        a: [null]\n", "strings, numbers or booleans"),
    ] {
        let e = ConfigErrors(errors(&format!("{base}{bad}"))).to_string();
        assert!(
            e.contains("routes[0].auth.claims.") && e.contains(why),
            "{bad}: {e}"
        );
    }
}

#[test]
fn dpop_settings_are_compiled_and_checked() {
    let errs = errors(
        "
upstreams: { lms: { endpoints: ['127.0.0.1:8000'] } }
auth:
  providers:
    j:
      type: jwt
      algorithms: [HS256]
      keys: [{ secret_env: JWT_SECRET }]
      dpop: sometimes
      dpop_algorithms: [ES256, HS256, XX1]
    k:
      type: api_key
      scheme: dpop
      keys: []
routes: [{ name: a, path_prefix: /, upstream: lms }]
",
    );
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(has("auth.providers.j.dpop: \"sometimes\""), "{text:?}");
    assert!(
        has("auth.providers.j.dpop_algorithms[1]: HS256 is symmetric"),
        "{text:?}"
    );
    assert!(
        has("auth.providers.j.dpop_algorithms[2]: unknown algorithm"),
        "{text:?}"
    );
    assert!(
        has("auth.providers.k.scheme: DPoP is the scheme"),
        "{text:?}"
    );

    let c = load(
        "
upstreams: { lms: { endpoints: ['127.0.0.1:8000'] } }
auth:
  providers:
    j:
      type: jwt
      algorithms: [HS256]
      keys: [{ secret_env: JWT_SECRET }]
      required_claims: { token_type: access }
      dpop: required
      leeway: 10s
    plain:
      type: jwt
      algorithms: [HS256]
      keys: [{ secret_env: JWT_SECRET }]
      required_claims: { token_type: access }
routes: [{ name: a, path_prefix: /, upstream: lms }]
",
    )
    .expect("loads");
    let dpop = |name: &str| match &c
        .auth
        .providers
        .iter()
        .find(|p| p.name == name)
        .expect("provider")
        .kind
    {
        model::ProviderKind::Jwt(j) => j.dpop.clone(),
        _ => panic!("jwt"),
    };
    let j = dpop("j");
    assert_eq!(j.mode, model::DpopMode::Required);
    assert_eq!(&*j.algs, "ES256 EdDSA PS256 RS256");
    assert_eq!(
        j.window,
        std::time::Duration::from_secs(10),
        "the provider's leeway"
    );
    let plain = dpop("plain");
    assert_eq!(plain.mode, model::DpopMode::Off);
    assert_eq!(plain.window, std::time::Duration::from_secs(60));
}

#[test]
fn the_jwks_refetch_limit_may_be_shortened_but_not_below_a_second() {
    let with = |v: &str| {
        format!(
            "
upstreams: {{ lms: {{ endpoints: ['127.0.0.1:8000'] }} }}
auth:
  providers:
    idp: {{ type: jwt, algorithms: [RS256], jwks_url: 'https://idp.example/jwks.json', {v} }}
routes:
  - {{ name: api, path_prefix: /api/, auth: required, upstream: lms }}
"
        )
    };
    let spec = |c: &Config| match &c.auth.providers[0].kind {
        model::ProviderKind::Jwt(j) => j.jwks_min_refetch,
        _ => panic!("a jwt provider"),
    };
    let c = load(&with("jwks_refresh: 5m")).expect("loads");
    assert_eq!(spec(&c), std::time::Duration::from_secs(5), "the default");
    let c = load(&with("jwks_min_refetch: 1s")).expect("loads");
    assert_eq!(spec(&c), std::time::Duration::from_secs(1));
    for bad in ["jwks_min_refetch: 500ms", "jwks_min_refetch: 2h"] {
        let e = errors(&with(bad));
        assert!(
            e.iter()
                .any(|e| e.path == "auth.providers.idp.jwks_min_refetch"),
            "{bad}: {}",
            ConfigErrors(e)
        );
    }
}
