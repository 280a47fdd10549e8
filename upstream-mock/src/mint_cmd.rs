//! `upstream-mock mint`: prints one simplejwt-shaped access token, for scripts and the
//! demo (`TOKEN=$(upstream-mock mint --sub 42)`).

use std::io::Write as _;

use serde_json::json;

use crate::{
    cli::{MintArgs, ProofArgs},
    keys::{self, Jwks, KeySet, MintRequest},
    tokens::{simplejwt, unix_now},
};

pub fn run(args: &MintArgs) -> Result<(), String> {
    let mut claims = simplejwt::claims(
        simplejwt::ACCESS,
        &simplejwt::user_id_value(&args.sub),
        unix_now(),
        args.ttl,
    );
    if let Some(scope) = &args.scope {
        claims.insert("scope".into(), json!(scope));
    }
    if let Some(iss) = &args.iss {
        claims.insert("iss".into(), json!(iss));
    }
    let claims = serde_json::Value::Object(claims);
    let kid = args.kid.as_deref();
    let token = if keys::KeyFamily::for_alg(args.alg).is_some() {
        // Asymmetric keys are only loaded when needed, so an HS256 mint works even
        // with a broken --keys-dir.
        let jwks = Jwks::new(KeySet::load(args.keys_dir.as_deref())?);
        let claims = claims.as_object().cloned().unwrap_or_default();
        let request = MintRequest {
            alg: args.alg,
            kid,
            omit_kid: false,
            secret: None,
            claims: &claims,
        };
        keys::mint(&jwks, args.jwt_secret.as_bytes(), &request)?
    } else {
        keys::sign_hmac(args.alg, kid, &claims, args.jwt_secret.as_bytes())?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing token: {e}"))
}

/// `upstream-mock dpop-proof`: one proof on stdout, for curl in scripts and the demo.
pub fn proof(args: &ProofArgs) -> Result<(), String> {
    let keys = KeySet::load(args.keys_dir.as_deref())?;
    let key = keys
        .get(&args.kid)
        .ok_or_else(|| format!("no key {:?}", args.kid))?;
    let proof = crate::dpop::proof(
        key,
        args.alg,
        &crate::dpop::ProofFor {
            method: &args.method,
            url: &args.url,
            token: args.token.as_deref(),
            nonce: args.nonce.as_deref(),
            iat: unix_now(),
        },
    )?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{proof}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing proof: {e}"))
}
