//! API keys, configured as SHA-256 digests and compared in constant time.

use super::Principal;
use crate::config::model::{ApiKeySource, ApiKeySpec};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub struct ApiKeys {
    pub name: Arc<str>,
    pub source: ApiKeySource,
    keys: Vec<(Arc<str>, [u8; 32], Principal)>,
}

impl ApiKeys {
    pub fn new(name: &str, spec: &ApiKeySpec) -> Self {
        let name: Arc<str> = name.into();
        let keys = spec
            .keys
            .iter()
            .map(|k| {
                let id: Arc<str> = k.id.as_str().into();
                let principal = Principal {
                    subject: k.subject.clone(),
                    scopes: super::scope_set(k.scopes.clone()),
                    provider: name.clone(),
                    expires_at: None,
                    valid_until: None,
                    credential_id: Some(id.clone()),
                    jti: None,
                    issued_at: None,
                    jkt: None,
                    claims: None,
                };
                (id, k.sha256, principal)
            })
            .collect();
        ApiKeys {
            name,
            source: spec.source.clone(),
            keys,
        }
    }

    /// Whether `Authorization: <scheme> ...` is this provider's.
    pub fn takes_scheme(&self, scheme: &str) -> bool {
        matches!(&self.source, ApiKeySource::Scheme(s) if s.eq_ignore_ascii_case(scheme))
    }

    /// Looks a key up by its digest. Every configured digest is compared, in constant time,
    /// so timing tells nothing about how close a guess was or which entry matched.
    pub fn verify(&self, key: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found: Option<&Principal> = None;
        for (_, want, principal) in &self.keys {
            if bool::from(digest.ct_eq(want)) {
                found = Some(principal);
            }
        }
        found.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::ApiKeyEntrySpec;

    #[test]
    fn finds_keys_by_digest_only() {
        let spec = ApiKeySpec {
            source: ApiKeySource::Scheme("Api-Key".into()),
            keys: vec![ApiKeyEntrySpec {
                id: "ci".into(),
                sha256: Sha256::digest(b"ci-demo-key").into(),
                subject: "service:ci".into(),
                scopes: vec!["search".into()],
            }],
        };
        let keys = ApiKeys::new("svc", &spec);
        let p = keys.verify("ci-demo-key").expect("known key");
        assert_eq!(p.subject, "service:ci");
        assert_eq!(p.credential_id.as_deref(), Some("ci"));
        assert!(keys.verify("ci-demo-kez").is_none());
        assert!(keys.verify("").is_none());
        assert!(keys.takes_scheme("api-key"));
        assert!(!keys.takes_scheme("Bearer"));
    }
}
