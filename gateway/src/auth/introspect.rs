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

#[derive(Deserialize)]
struct Answer {
    active: bool,
    #[serde(default)]
    sub: Option<serde_json::Value>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
}

pub struct Introspector {
    pub name: Arc<str>,
    url: String,
    client_id: String,
    client_secret: String,
    timeout: Duration,
    client: reqwest::Client,
}

impl Introspector {
    pub fn new(name: &str, spec: &IntrospectionSpec) -> Result<Self, String> {
        let client = reqwest::Client::builder()
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
            client,
        })
    }

    pub async fn introspect(&self, token: &str) -> Result<Principal, IntrospectionFailure> {
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
                tracing::warn!(provider = %self.name, timeout = e.is_timeout(), "introspection request failed");
                return Err(IntrospectionFailure::Unavailable);
            }
        };
        if !resp.status().is_success() {
            tracing::warn!(provider = %self.name, status = resp.status().as_u16(), "introspection endpoint refused");
            return Err(IntrospectionFailure::Unavailable);
        }
        let answer: Answer = match resp.json().await {
            Ok(a) => a,
            Err(_) => return Err(IntrospectionFailure::Unavailable),
        };
        if !answer.active {
            return Err(IntrospectionFailure::Inactive);
        }
        let subject = match (answer.sub, answer.username) {
            (Some(serde_json::Value::String(s)), _) if !s.is_empty() => s,
            (Some(serde_json::Value::Number(n)), _) => n.to_string(),
            (_, Some(u)) if !u.is_empty() => u,
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
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let expires_at = answer.exp.map(at);
        if expires_at.is_some_and(|e| e <= SystemTime::now()) {
            // Active but already past its exp: a server clock problem; trust exp.
            return Err(IntrospectionFailure::Inactive);
        }
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
        })
    }
}
