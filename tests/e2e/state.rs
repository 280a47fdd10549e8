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
