//! Per-request JWT verification cost (issue 3), through authgate's public API: one
//! `authgate::auth::jwt::JwtVerifier` per algorithm, built from a `JwtSpec` with one static key
//! exactly as a `type: jwt` provider with `keys:` is, and `verify(token)` timed in a loop. No
//! token cache is involved: every call decodes the header, checks the signature and the claims.
//!
//! ```text
//! authgate-verify --keys-dir DIR --hmac-secret SECRET [--batches N] [--batch-ms MS] \
//!     HS256=<token> RS256=<token> ES256=<token>
//! ```
//!
//! Keys: HS256 uses SECRET, RS256 `DIR/rsa-1.pub.pem` (kid rsa-1), ES256 `DIR/ec-1.pub.pem`
//! (kid ec-1). The tokens come from outside (bench/run.sh mints them with `upstream-mock mint`),
//! so this binary needs no signing library of its own.
//!
//! Before timing, each token must verify, and a copy with one signature character changed must
//! be refused (so nothing is timed on a path that skips the signature). Then, per algorithm, the
//! iteration count is calibrated so one batch takes about MS milliseconds, N batches run, and one
//! line is printed:
//!
//! ```text
//! verify alg=RS256 us_per_verify=21.40 verifies_per_s=46729 batches=7 iters_per_batch=9345 min_us=21.31 max_us=21.77
//! ```
//!
//! `verify` is async (a JWKS lookup may wait); with static keys only it never waits, so it is
//! driven by polling with a no-op waker on this thread, the cost a current-thread runtime adds
//! being none. (A tokio dependency here would change the workspace's Cargo.lock.)

use authgate::auth::jwt::JwtVerifier;
use authgate::config::model::{JwtSpec, KeyMaterial, Secret, StaticKey};
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: authgate_alloc::MiMalloc = authgate_alloc::MiMalloc;

/// Drives a future that is expected to complete without waiting on anything.
fn block_on<F: Future>(fut: F) -> Result<F::Output, String> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Ok(v);
        }
        std::thread::yield_now();
    }
    Err("verify() kept waiting (it should not with static keys)".into())
}

struct Args {
    keys_dir: PathBuf,
    hmac_secret: String,
    batches: usize,
    batch_ms: u64,
    tokens: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut keys_dir = None;
    let mut hmac_secret = None;
    let mut batches = 7;
    let mut batch_ms = 200;
    let mut tokens = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--keys-dir" => keys_dir = Some(PathBuf::from(value("--keys-dir")?)),
            "--hmac-secret" => hmac_secret = Some(value("--hmac-secret")?),
            "--batches" => {
                batches = value("--batches")?
                    .parse()
                    .map_err(|e| format!("--batches: {e}"))?
            }
            "--batch-ms" => {
                batch_ms = value("--batch-ms")?
                    .parse()
                    .map_err(|e| format!("--batch-ms: {e}"))?
            }
            "-h" | "--help" => {
                return Err("usage: authgate-verify --keys-dir DIR --hmac-secret SECRET \
                            [--batches N] [--batch-ms MS] HS256=<token> RS256=<token> ES256=<token>"
                    .into())
            }
            other => match other.split_once('=') {
                Some((alg, tok)) if !tok.is_empty() => tokens.push((alg.to_string(), tok.to_string())),
                _ => return Err(format!("unknown argument {other} (see --help)")),
            },
        }
    }
    if tokens.is_empty() {
        return Err("no ALG=<token> given (see --help)".into());
    }
    Ok(Args {
        keys_dir: keys_dir.ok_or("--keys-dir is required")?,
        hmac_secret: hmac_secret.ok_or("--hmac-secret is required")?,
        batches: batches.max(1),
        batch_ms: batch_ms.max(1),
        tokens,
    })
}

/// The provider a config with `algorithms: [alg]` and one static key compiles to.
fn verifier(alg: &str, args: &Args) -> Result<JwtVerifier, String> {
    let pem = |file: &str| -> Result<Arc<[u8]>, String> {
        let p = args.keys_dir.join(file);
        std::fs::read(&p)
            .map(Arc::from)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let (kid, material) = match alg {
        "HS256" | "HS384" | "HS512" => (
            None,
            KeyMaterial::Hmac(Secret::new(args.hmac_secret.as_bytes().to_vec())),
        ),
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => (
            Some("rsa-1".to_string()),
            KeyMaterial::RsaPem(pem("rsa-1.pub.pem")?),
        ),
        "ES256" => (
            Some("ec-1".to_string()),
            KeyMaterial::EcPem(pem("ec-1.pub.pem")?),
        ),
        other => return Err(format!("unsupported algorithm {other}")),
    };
    let spec = JwtSpec {
        algorithms: vec![alg
            .parse()
            .map_err(|_| format!("unknown algorithm {alg}"))?],
        keys: vec![StaticKey { kid, material }],
        jwks_url: None,
        discovery: false,
        jwks_refresh: Duration::from_secs(300),
        jwks_min_refetch: Duration::from_secs(5),
        issuer: None,
        audience: Vec::new(),
        leeway: Duration::from_secs(30),
        subject_claim: "user_id".into(),
        scopes_claim: "scope".into(),
        required_claims: Vec::new(),
        typ: None,
        ca: None,
        dpop: Default::default(),
    };
    JwtVerifier::new(&format!("bench-{}", alg.to_ascii_lowercase()), &spec, None)
}

/// The token with one signature character changed (not the last: its low bits may be padding).
fn forged(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let i = b.len().saturating_sub(5);
    if let Some(c) = b.get_mut(i) {
        *c = if *c == b'A' { b'B' } else { b'A' };
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn time_batch(v: &JwtVerifier, token: &str, iters: u64) -> Result<Duration, String> {
    let started = Instant::now();
    for _ in 0..iters {
        let r = block_on(v.verify(std::hint::black_box(token)))?;
        if r.is_err() {
            return Err("a valid token was refused during the timing".into());
        }
        std::hint::black_box(&r);
    }
    Ok(started.elapsed())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The request DPoP proofs given as `DPOP-<ALG>=<proof>` are for (bench/run.sh makes them
/// with `upstream-mock dpop-proof --url DPOP_HTU --token DPOP_TOKEN`).
const DPOP_HTU: &str = "http://bench.test/dpop";
const DPOP_TOKEN: &str = "bench-token";

/// `authgate::auth::dpop::verify_proof` on one proof: what a DPoP request costs on top of a
/// cached token (every check of RFC 9449 4.3 but the replay set, which is one hash-set insert).
fn time_proof(alg: &str, proof: &str, args: &Args) -> Result<(), String> {
    use authgate::auth::dpop::{verify_proof, Expected};
    use authgate::config::model::DEFAULT_DPOP_ALGORITHMS as DEFAULT_ALGORITHMS;
    let check = |p: &str| {
        verify_proof(
            std::hint::black_box(p),
            &Expected {
                method: "GET",
                htu: DPOP_HTU,
                access_token: Some(DPOP_TOKEN),
                now: std::time::SystemTime::now(),
                // The proofs are made once, before the run.
                window: Duration::from_secs(3600),
                algorithms: &DEFAULT_ALGORITHMS,
            },
        )
    };
    check(proof).map_err(|e| format!("{alg}: the bench proof was refused: {e:?}"))?;
    if check(&forged(proof)).is_ok() {
        return Err(format!("{alg}: a forged proof was accepted"));
    }
    let batch = |iters: u64| -> Result<Duration, String> {
        let started = Instant::now();
        for _ in 0..iters {
            check(proof).map_err(|e| format!("{alg}: refused during the timing: {e:?}"))?;
        }
        Ok(started.elapsed())
    };
    report(alg, args, batch)
}

/// Calibrates the iteration count so one batch takes about `--batch-ms`, runs the batches and
/// prints the line bench/run.sh reads.
fn report(
    alg: &str,
    args: &Args,
    batch: impl Fn(u64) -> Result<Duration, String>,
) -> Result<(), String> {
    let target = Duration::from_millis(args.batch_ms);
    let mut iters: u64 = 16;
    loop {
        let took = batch(iters)?;
        if took * 10 >= target || iters >= 1 << 30 {
            let per = took.as_secs_f64() / iters as f64;
            iters = ((target.as_secs_f64() / per.max(1e-9)) as u64).max(1);
            break;
        }
        iters *= 2;
    }
    let mut per_us = Vec::with_capacity(args.batches);
    for _ in 0..args.batches {
        let took = batch(iters)?;
        per_us.push(took.as_secs_f64() * 1e6 / iters as f64);
    }
    let min = per_us.iter().copied().fold(f64::INFINITY, f64::min);
    let max = per_us.iter().copied().fold(0.0, f64::max);
    let med = median(per_us);
    println!(
        "verify alg={alg} us_per_verify={med:.2} verifies_per_s={:.0} batches={} iters_per_batch={iters} min_us={min:.2} max_us={max:.2}",
        1e6 / med,
        args.batches
    );
    Ok(())
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    for (alg, token) in &args.tokens {
        if alg.starts_with("DPOP-") {
            time_proof(alg, token, &args)?;
            continue;
        }
        let v = verifier(alg, &args)?;
        match block_on(v.verify(token))? {
            Ok(p) if p.subject.is_empty() => return Err(format!("{alg}: empty subject")),
            Ok(_) => {}
            Err(e) => return Err(format!("{alg}: the bench token was refused: {e:?}")),
        }
        if block_on(v.verify(&forged(token)))?.is_ok() {
            return Err(format!("{alg}: a forged token was accepted"));
        }
        // Calibrate: double the count until a run takes a tenth of a batch, then scale.
        report(alg, &args, |iters| time_batch(&v, token, iters))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authgate-verify: {e}");
            ExitCode::FAILURE
        }
    }
}
