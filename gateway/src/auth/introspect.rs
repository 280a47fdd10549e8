//! RFC 7662 token introspection for opaque tokens.

use super::Principal;
use crate::config::model::IntrospectionSpec;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntrospectionFailure {
    /// The server said `active: false`.
    Inactive,
    /// It answered, but not with something usable.
    Malformed(&'static str),
    /// Down, timing out, or refusing our client credentials: nobody can tell.
    Unavailable,
}

/// Longest introspection answer read: a few hundred bytes is usual.
const MAX_ANSWER: usize = 64 * 1024;

use super::MAX_TIME_SECS as MAX_TIME;

#[derive(Deserialize)]
struct Answer {
    active: bool,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    /// Everything else, where the subject field is looked up.
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

pub struct Introspector {
    pub name: Arc<str>,
    url: String,
    client_id: String,
    client_secret: String,
    timeout: Duration,
    subject_field: String,
    client: reqwest::Client,
    /// `max_concurrency` calls at once: a flood of junk tokens costs the IdP at most that.
    slots: tokio::sync::Semaphore,
    /// Fields of the answer copied into the principal for route rules.
    keep: Arc<[crate::config::model::ClaimPath]>,
    /// `dpop` is on: the answer's `cnf` is read (RFC 9449 6.2).
    binds: bool,
}

impl Introspector {
    pub fn new(name: &str, spec: &IntrospectionSpec) -> Result<Self, String> {
        let client = crate::tls::trust::idp_client_builder(spec.ca.as_deref())
            .map_err(|e| format!("auth.providers.{name}: {e}"))?
            .timeout(spec.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("auth.providers.{name}: HTTP client: {e}"))?;
        Ok(Introspector {
            name: name.into(),
            url: spec.url.clone(),
            client_id: spec.client_id.clone(),
            client_secret: String::from_utf8_lossy(spec.client_secret.expose()).into_owned(),
            timeout: spec.timeout,
            subject_field: spec.subject_field.clone(),
            client,
            slots: tokio::sync::Semaphore::new(spec.max_concurrency as usize),
            keep: Arc::from([]),
            binds: spec.dpop.mode != crate::config::model::DpopMode::Off,
        })
    }

    /// Keeps these fields of each answer with the principal (see `auth::keep_claims`).
    pub fn keeping(mut self, keep: Arc<[crate::config::model::ClaimPath]>) -> Self {
        self.keep = keep;
        self
    }

    pub async fn introspect(&self, token: &str) -> Result<Principal, IntrospectionFailure> {
        let Ok(_slot) = self.slots.try_acquire() else {
            tracing::warn!(provider = %self.name, "introspection calls at max_concurrency; answered 503");
            return Err(IntrospectionFailure::Unavailable);
        };
        let request = self
            .client
            .post(&self.url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .timeout(self.timeout)
            .send();
        let resp = match request.await {
            Ok(r) => r,
            Err(e) => {
                // The cause chain names TLS problems (expired, unknown issuer, wrong name); the
                // URL and the token are not in it.
                let e = e.without_url();
                tracing::warn!(provider = %self.name, timeout = e.is_timeout(), error = %crate::tls::trust::error_chain(&e), "introspection request failed");
                return Err(IntrospectionFailure::Unavailable);
            }
        };
        if !resp.status().is_success() {
            tracing::warn!(provider = %self.name, status = resp.status().as_u16(), "introspection endpoint refused");
            return Err(IntrospectionFailure::Unavailable);
        }
        if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
            tracing::warn!(provider = %self.name, "introspection answer too large");
            return Err(IntrospectionFailure::Unavailable);
        }
        let body = match read_capped(resp, MAX_ANSWER).await {
            Some(b) => b,
            None => {
                tracing::warn!(provider = %self.name, "introspection answer unreadable or too large");
                return Err(IntrospectionFailure::Unavailable);
            }
        };
        let answer: Answer = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(_) => return Err(IntrospectionFailure::Unavailable),
        };
        if !answer.active {
            return Err(IntrospectionFailure::Inactive);
        }
        // Only the configured field: falling back to `username` would put user names in the
        // namespace of user ids, where "1" is somebody else.
        let subject = match answer.rest.get(&self.subject_field) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => {
                return Err(IntrospectionFailure::Malformed(
                    "introspection gave no subject",
                ))
            }
        };
        if !subject.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(IntrospectionFailure::Malformed(
                "subject is not printable ASCII",
            ));
        }
        if answer.exp.is_some_and(|t| t > MAX_TIME) || answer.iat.is_some_and(|t| t > MAX_TIME) {
            return Err(IntrospectionFailure::Malformed(
                "introspection gave an exp or iat out of range",
            ));
        }
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let expires_at = answer.exp.map(at);
        if expires_at.is_some_and(|e| e <= SystemTime::now()) {
            // Active but already past its exp: a server clock problem; trust exp.
            return Err(IntrospectionFailure::Inactive);
        }
        let jkt = match self.binds {
            true => super::dpop::confirmation(answer.rest.get("cnf"))
                .map_err(IntrospectionFailure::Malformed)?,
            false => None,
        };
        Ok(Principal {
            subject,
            scopes: super::scope_set(
                answer
                    .scope
                    .as_deref()
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter(|s| s.bytes().all(|b| (0x21..0x7f).contains(&b)))
                    .map(str::to_owned)
                    .collect(),
            ),
            provider: self.name.clone(),
            expires_at,
            valid_until: expires_at,
            credential_id: None,
            jti: answer.jti,
            issued_at: answer.iat.map(at),
            claims: super::keep_claims(&self.keep, &answer.rest),
            jkt,
        })
    }
}

/// The body, or `None` past `limit` bytes or on a read error.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if body.len() + chunk.len() > limit {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}
