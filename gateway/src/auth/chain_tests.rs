//! The provider chain, the token cache and revocation across replicas: two authenticators
//! (each with its own local cache and revocation list, as two processes have) sharing one
//! in-memory shared tier.

use super::*;
use crate::clock::ManualClock;
use crate::config::model::Config;
use crate::tier::memory::MemoryTier;
use revoke::{Reach, Revocation};
use std::path::Path;

const S1: &str = "first-secret-of-at-least-32-bytes!!";
const S2: &str = "second-secret-of-at-least-32-bytes!";

fn config(secret: &str) -> Config {
    let yaml = r#"
upstreams: { u: { endpoints: ["127.0.0.1:9"] } }
auth:
  providers:
    jwt: { type: jwt, algorithms: [HS256], keys: [{ kid: k1, secret_env: S }], subject_claim: user_id }
    keys:
      type: api_key
      scheme: Api-Key
      keys: [{ id: ci, sha256: "2c7e0bbe1ab86cc5fc6b3346e3a8ec1bd11e4e1a6cf8e14ee7f4f42ad4fd2cfb", subject: "service:ci" }]
routes:
  - { name: api, path_prefix: /api/, auth: required, upstream: u }
"#;
    let yaml = yaml.replace(
        "2c7e0bbe1ab86cc5fc6b3346e3a8ec1bd11e4e1a6cf8e14ee7f4f42ad4fd2cfb",
        &hex::encode(Sha256::digest(b"ci-key")),
    );
    let env: HashMap<String, String> = [("S".to_string(), secret.to_string())].into();
    crate::config::load_str(&yaml, Path::new("."), &env).expect("config")
}

/// One gateway process: its own state, the shared tier given.
struct Replica {
    config: Config,
    auth: Authenticator,
}

impl Replica {
    fn new(secret: &str, tier: &Arc<MemoryTier>) -> Self {
        let config = config(secret);
        let state = AuthState::default();
        let auth = Authenticator::build(
            &config.auth,
            &config.routes,
            &KeyStores::default(),
            &state,
            Some(tier.clone() as Arc<dyn SharedTier>),
            1,
            &Metrics::new(),
        )
        .expect("authenticator");
        state.commit(&auth.cache, config.auth.revocation_ttl);
        // As if its event listener were subscribed (the MemoryTier delivers no events).
        auth.revocations.subscribed(LISTENER);
        Replica { config, auth }
    }

    async fn present(&self, authorization: &str) -> Decision {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            authorization.parse().expect("value"),
        );
        let route = &self.config.routes[0];
        let req = Request {
            headers: &headers,
            fallback: None,
            target: dpop::Target {
                method: "GET",
                scheme: "https",
                host: Some("gw.test"),
                path: b"/api/x",
            },
        };
        self.auth
            .authenticate(&route.auth, &route.claims, &req)
            .await
    }

    async fn bearer(&self, token: &str) -> Decision {
        self.present(&format!("Bearer {token}")).await
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("test value")
        .as_secs()
}

fn jwt(secret: &str, user_id: u64, iat: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"user_id": user_id, "iat": iat, "exp": now_s() + 600, "jti": format!("j{user_id}-{iat}")}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

fn subject(d: &Decision) -> Option<&str> {
    d.result
        .as_ref()
        .ok()
        .and_then(Identity::principal)
        .map(|p| p.subject.as_str())
}

/// The revocation of one token (by hash), for a minute.
fn token_revocation(token: &str) -> Revocation {
    Revocation::Token {
        id: hex::encode(Sha256::digest(token.as_bytes())),
        ttl_ms: 60_000,
    }
}

fn tier_key(token: &str) -> String {
    MemoryTier::key(
        crate::tier::kind::CACHED,
        &hex::encode(Sha256::digest(token.as_bytes())),
    )
}

fn tier() -> Arc<MemoryTier> {
    MemoryTier::new(Arc::new(ManualClock::default()))
}

#[tokio::test]
async fn a_token_verified_on_one_replica_is_served_from_the_shared_tier_on_another() {
    let tier = tier();
    let (a, b) = (Replica::new(S1, &tier), Replica::new(S1, &tier));
    let t = jwt(S1, 7, now_s());

    let d = a.bearer(&t).await;
    assert_eq!((subject(&d), d.tier), (Some("7"), Some(Tier::Miss)));
    assert!(tier.holds(&tier_key(&t)), "stored for the other replicas");
    let d = b.bearer(&t).await;
    assert_eq!((subject(&d), d.tier), (Some("7"), Some(Tier::Redis)));
    let d = b.bearer(&t).await;
    assert_eq!(d.tier, Some(Tier::Local), "and kept locally from then on");
}

#[tokio::test]
async fn a_shared_entry_from_another_provider_configuration_is_not_trusted() {
    // Replica b has rotated to another secret: what a knew under the old one is not its to
    // believe, and the token does not verify under its own key.
    let tier = tier();
    let (a, b) = (Replica::new(S1, &tier), Replica::new(S2, &tier));
    let t = jwt(S1, 7, now_s());
    assert_eq!(subject(&a.bearer(&t).await), Some("7"));
    let d = b.bearer(&t).await;
    assert_eq!(d.tier, Some(Tier::Miss));
    assert_eq!(d.denial, Some(Denial::BadSignature), "{:?}", d.result.err());
}

#[tokio::test]
async fn a_revocation_reaches_a_replica_that_never_heard_of_it() {
    let tier = tier();
    let (a, b) = (Replica::new(S1, &tier), Replica::new(S1, &tier));
    let t = jwt(S1, 7, now_s());
    assert_eq!(subject(&a.bearer(&t).await), Some("7"));

    let r = token_revocation(&t);
    let reach = a.auth.revocations.revoke(r.clone(), Some(&*tier)).await;
    assert_eq!(reach, Reach::All);
    assert_eq!(*tier.published.lock().expect("lock"), [r], "announced once");
    assert!(
        !tier.holds(&tier_key(&t)),
        "the shared cached decision went too"
    );
    assert_eq!(a.bearer(&t).await.denial, Some(Denial::Revoked));
    // b missed the announcement (it was not listening yet): the shared keys tell it.
    let d = b.bearer(&t).await;
    assert_eq!(
        (d.denial, d.tier),
        (Some(Denial::Revoked), Some(Tier::Miss))
    );
    // Another token of the same user is not touched.
    assert_eq!(
        subject(&b.bearer(&jwt(S1, 7, now_s() - 1)).await),
        Some("7")
    );
}

#[tokio::test]
async fn a_subject_revocation_refuses_tokens_issued_before_it_everywhere() {
    let tier = tier();
    let (a, b) = (Replica::new(S1, &tier), Replica::new(S1, &tier));
    let before = jwt(S1, 9, now_s() - 5);
    assert_eq!(subject(&b.bearer(&before).await), Some("9"));
    let reach = a
        .auth
        .revocations
        .revoke(
            Revocations::subject_now("9", Duration::from_secs(60)),
            Some(&*tier),
        )
        .await;
    assert_eq!(reach, Reach::All);
    // b's own copy is still cached locally and it heard nothing: a fresh replica sees it.
    let c = Replica::new(S1, &tier);
    assert_eq!(c.bearer(&before).await.denial, Some(Denial::Revoked));
    assert_eq!(a.bearer(&before).await.denial, Some(Denial::Revoked));
    assert_eq!(
        subject(&c.bearer(&jwt(S1, 10, now_s() - 5)).await),
        Some("10")
    );
}

/// The id the replicas here listen under.
const LISTENER: u64 = u64::MAX;

#[tokio::test]
async fn in_a_gap_in_revocation_events_a_cached_identity_is_checked_again() {
    let tier = tier();
    let (a, b) = (Replica::new(S1, &tier), Replica::new(S1, &tier));
    let t = jwt(S1, 7, now_s());
    assert_eq!(b.bearer(&t).await.tier, Some(Tier::Miss));
    assert_eq!(b.bearer(&t).await.tier, Some(Tier::Local));
    // b stops hearing events; a revocation made meanwhile only reaches the shared keys.
    b.auth.revocations.unsubscribed(LISTENER);
    let r = token_revocation(&t);
    assert_eq!(a.auth.revocations.revoke(r, Some(&*tier)).await, Reach::All);
    let d = b.bearer(&t).await;
    assert_eq!(
        (d.denial, d.tier),
        (Some(Denial::Revoked), Some(Tier::Local)),
        "b's cached copy is checked with the shared tier while b hears no events"
    );
    // Another token still passes in the gap, from the cache once the shared tier clears it.
    let other = jwt(S1, 8, now_s());
    assert_eq!(subject(&b.bearer(&other).await), Some("8"));
    let d = b.bearer(&other).await;
    assert_eq!((subject(&d), d.tier), (Some("8"), Some(Tier::Local)));
}

#[tokio::test]
async fn an_identity_whose_revocation_check_went_unanswered_is_cached_only_until_redis_is_asked_again(
) {
    let tier = tier();
    let (a, b) = (Replica::new(S1, &tier), Replica::new(S1, &tier));
    let t = jwt(S1, 7, now_s());
    tier.set_down(true);
    // The Redis-down rule: it passes on what a knows, and is remembered for a moment only.
    assert_eq!(subject(&a.bearer(&t).await), Some("7"));
    let d = a.bearer(&t).await;
    assert_eq!((subject(&d), d.tier), (Some("7"), Some(Tier::Local)));
    tier.set_down(false);
    tokio::time::sleep(super::revoke::UNCHECKED_TTL + Duration::from_millis(50)).await;
    // Revoked through b, whose event a never hears (the MemoryTier sends none).
    assert_eq!(
        b.auth
            .revocations
            .revoke(token_revocation(&t), Some(&*tier))
            .await,
        Reach::All
    );
    assert_eq!(
        a.bearer(&t).await.denial,
        Some(Denial::Revoked),
        "found in the shared keys, not passed from a cache"
    );
}

/// What a replica learns from the shared keys it keeps, whatever the kind of revocation: a
/// later check that Redis cannot answer does not let the identity through again.
#[tokio::test]
async fn a_revocation_found_in_the_shared_keys_is_kept_locally() {
    let tier = tier();
    let (a, b) = (Replica::new(S1, &tier), Replica::new(S1, &tier));
    let iat = now_s();
    let t = jwt(S1, 7, iat);
    assert_eq!(b.bearer(&t).await.tier, Some(Tier::Miss));
    b.auth.revocations.unsubscribed(LISTENER);
    let by_jti = Revocation::Jti {
        id: format!("j7-{iat}"),
        ttl_ms: 60_000,
    };
    assert_eq!(
        a.auth.revocations.revoke(by_jti, Some(&*tier)).await,
        Reach::All
    );
    assert_eq!(b.bearer(&t).await.denial, Some(Denial::Revoked));
    tier.set_down(true);
    assert_eq!(
        b.bearer(&t).await.denial,
        Some(Denial::Revoked),
        "still refused with Redis gone"
    );
}

#[tokio::test]
async fn with_the_shared_tier_down_tokens_verify_and_revocations_wait_for_it() {
    let tier = tier();
    let (a, b) = (Replica::new(S1, &tier), Replica::new(S1, &tier));
    tier.set_down(true);
    let t = jwt(S1, 7, now_s());
    let d = a.bearer(&t).await;
    assert_eq!((subject(&d), d.tier), (Some("7"), Some(Tier::Miss)));

    let r = token_revocation(&t);
    assert_eq!(
        a.auth.revocations.revoke(r, Some(&*tier)).await,
        Reach::Pending
    );
    assert_eq!(a.auth.revocations.pending(), 1, "kept to retry");
    assert_eq!(
        a.bearer(&t).await.denial,
        Some(Denial::Revoked),
        "refused here at once"
    );

    tier.set_down(false);
    assert!(a.auth.revocations.flush(&*tier).await);
    assert_eq!(a.auth.revocations.pending(), 0);
    assert_eq!(b.bearer(&t).await.denial, Some(Denial::Revoked));
}

#[tokio::test]
async fn the_chain_gives_each_credential_to_the_provider_that_reads_it() {
    let tier = tier();
    let a = Replica::new(S1, &tier);
    let d = a.present("Api-Key ci-key").await;
    assert_eq!(subject(&d), Some("service:ci"));
    assert_eq!(
        d.valid.as_deref().map(|p| &*p.provider),
        Some("keys"),
        "answered by the API-key provider"
    );
    let d = a.present("Api-Key not-the-key").await;
    assert_eq!(d.denial, Some(Denial::UnknownKey));

    let forged = jwt(S2, 7, now_s());
    let d = a.bearer(&forged).await;
    assert_eq!(
        (d.denial, d.tier),
        (Some(Denial::BadSignature), Some(Tier::Miss))
    );
    // A refusal is remembered here (negative_ttl), never in the shared tier.
    let d = a.bearer(&forged).await;
    assert_eq!(
        (d.denial, d.tier),
        (Some(Denial::BadSignature), Some(Tier::Local))
    );
    assert!(!tier.holds(&tier_key(&forged)));

    let d = a.present("Basic YWxpY2U6cHc=").await;
    assert!(d.result.is_err(), "a scheme no provider reads");
}

#[tokio::test]
async fn an_unknown_kid_is_not_remembered_as_a_refusal() {
    // The key store decides when to ask the issuer again; a cached refusal would keep a key
    // rotated in since refused for negative_ttl.
    let tier = tier();
    let a = Replica::new(S1, &tier);
    let header = jsonwebtoken::Header {
        kid: Some("not-configured".into()),
        ..Default::default()
    };
    let t = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"user_id": 1, "exp": now_s() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(S1.as_bytes()),
    )
    .expect("token");
    for _ in 0..2 {
        let d = a.bearer(&t).await;
        assert_eq!(
            (d.denial, d.tier),
            (Some(Denial::UnknownKid), Some(Tier::Miss))
        );
    }
}
