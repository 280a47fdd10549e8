//! A provider's fingerprint: a digest of everything in its configuration that decides which
//! tokens it accepts and as whom (keys, issuer, audience, claim rules, API key list, subject
//! and scope claims). Cached identities carry the fingerprint of the provider that made them;
//! one made under another fingerprint (a rotated secret, a removed API key, a narrowed scope
//! list, a retired JWKS key) is a miss, locally and in Redis, whichever replica wrote it.

use crate::config::model::{KeyMaterial, ProviderKind, ProviderSpec};
use sha2::{Digest, Sha256};

pub type Fingerprint = [u8; 16];

/// The configuration part; a JWKS provider's current key set is folded in per lookup
/// ([`combine`]), since it changes without a reload.
pub fn of(spec: &ProviderSpec) -> Fingerprint {
    let mut h = Sha256::new();
    let mut put = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    put(spec.name.as_bytes());
    put(spec.kind.type_name().as_bytes());
    match &spec.kind {
        ProviderKind::Jwt(j) => {
            put(format!("{:?}", j.algorithms).as_bytes());
            for k in &j.keys {
                put(k.kid.as_deref().unwrap_or_default().as_bytes());
                match &k.material {
                    KeyMaterial::Hmac(s) => put(&Sha256::digest(s.expose())),
                    KeyMaterial::RsaPem(b) | KeyMaterial::EcPem(b) | KeyMaterial::EdPem(b) => {
                        put(b)
                    }
                }
            }
            put(j.jwks_url.as_deref().unwrap_or_default().as_bytes());
            put(&j.ca.as_ref().map(|c| c.fingerprint).unwrap_or_default());
            put(j.issuer.as_deref().unwrap_or_default().as_bytes());
            put(j.audience.join("\u{0}").as_bytes());
            put(&j.leeway.as_millis().to_be_bytes());
            put(j.subject_claim.as_bytes());
            put(j.scopes_claim.as_bytes());
            put(format!("{:?}", j.required_claims).as_bytes());
            put(j.typ.as_deref().unwrap_or_default().as_bytes());
            dpop(&mut put, &j.dpop);
        }
        ProviderKind::Introspection(i) => {
            put(i.url.as_bytes());
            put(i.client_id.as_bytes());
            put(i.subject_field.as_bytes());
            put(&i.ca.as_ref().map(|c| c.fingerprint).unwrap_or_default());
            dpop(&mut put, &i.dpop);
        }
        ProviderKind::ApiKey(k) => {
            put(format!("{:?}", k.source).as_bytes());
            for e in &k.keys {
                put(e.id.as_bytes());
                put(&e.sha256);
                put(e.subject.as_bytes());
                put(e.scopes.join(" ").as_bytes());
            }
        }
    }
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// With `dpop` on, identities carry their key binding (`jkt`): entries made with it off, or by
/// a build that did not know the field, must never be read as unbound. Off adds nothing, so
/// entries of providers without DPoP stay valid across an upgrade.
fn dpop(put: &mut impl FnMut(&[u8]), d: &crate::config::model::DpopSpec) {
    if d.mode != crate::config::model::DpopMode::Off {
        put(format!("dpop {:?}", d.mode).as_bytes());
    }
}

/// A provider's fingerprint with its JWKS key set's digest folded in: two XORed digests, no
/// hashing on the request path.
pub fn combine(config: &Fingerprint, key_set: &Fingerprint) -> Fingerprint {
    let mut out = *config;
    for (o, k) in out.iter_mut().zip(key_set) {
        *o ^= k;
    }
    out
}

/// The claim paths kept with a provider's identities.
pub fn of_kept(keep: &[crate::config::model::ClaimPath]) -> Fingerprint {
    let mut out = [0u8; 16];
    if keep.is_empty() {
        return out;
    }
    let mut h = Sha256::new();
    for p in keep {
        h.update((p.name.len() as u64).to_be_bytes());
        h.update(p.name.as_bytes());
    }
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

/// A JWKS document's digest: its keys, each serialised, in a stable order.
pub fn of_key_set(keys: &[jsonwebtoken::jwk::Jwk]) -> Fingerprint {
    let mut each: Vec<Vec<u8>> = keys
        .iter()
        .filter_map(|k| serde_json::to_vec(k).ok())
        .collect();
    each.sort();
    let mut h = Sha256::new();
    for k in &each {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k);
    }
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{ApiKeyEntrySpec, ApiKeySource, ApiKeySpec};

    fn api_keys(keys: &[(&str, &str, &[&str])]) -> ProviderSpec {
        ProviderSpec {
            index: 0,
            name: "keys".into(),
            kind: ProviderKind::ApiKey(ApiKeySpec {
                source: ApiKeySource::Scheme("Api-Key".into()),
                keys: keys
                    .iter()
                    .map(|(id, subject, scopes)| ApiKeyEntrySpec {
                        id: id.to_string(),
                        sha256: Sha256::digest(id.as_bytes()).into(),
                        subject: subject.to_string(),
                        scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn anything_that_decides_an_identity_changes_the_fingerprint() {
        let base = of(&api_keys(&[("ci", "service:ci", &["search", "admin"])]));
        assert_eq!(
            base,
            of(&api_keys(&[("ci", "service:ci", &["search", "admin"])]))
        );
        assert_ne!(
            base,
            of(&api_keys(&[("ci", "service:ci", &["search"])])),
            "narrowed scopes"
        );
        assert_ne!(base, of(&api_keys(&[])), "removed key");
        assert_ne!(
            base,
            of(&api_keys(&[("ci", "service:other", &["search", "admin"])]))
        );
        let ks = [7u8; 16];
        assert_ne!(combine(&base, &ks), base);
        assert_eq!(combine(&base, &[0; 16]), base);
    }
}
