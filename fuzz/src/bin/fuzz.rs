//! A fuzz driver that runs on stable Rust: for each target, for a bounded time, it feeds
//! random inputs and mutations of the seed corpus, catches panics, and saves any crashing
//! input under `regressions/<target>/` (which the crate's tests replay).
//!
//! Usage: `fuzz [--seconds N] [TARGET...]` (default: every target, 60 s each).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// xorshift64*: fast, deterministic per seed, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that matter to the parsers: separators, escapes, quotes, YAML and JWT syntax.
const INTERESTING: &[&[u8]] = &[
    b"/",
    b"//",
    b".",
    b"..",
    b"%",
    b"%2e",
    b"%2F",
    b"%00",
    b"%zz",
    b"%C3%A9",
    b";",
    b"?",
    b"#",
    b"\\",
    b"\xff",
    b"\x00",
    b"\n",
    b": ",
    b"- ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"${",
    b"}",
    b"\"",
    b"'",
    b"*",
    b"eyJhbGciOiJIUzI1NiJ9",
    b".",
    b"Bearer ",
    b"ms",
    b"s",
    b"m",
    b"h",
    b"d",
    b"/day",
    b"KiB",
    b"GB",
    b"99999999999999999999",
    b"-1",
    b"0",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
            1 => {
                let i = rng.below(input.len() + 1);
                let token = INTERESTING[rng.below(INTERESTING.len())];
                input.splice(i..i, token.iter().copied());
            }
            2 if !input.is_empty() => {
                let a = rng.below(input.len());
                let b = (a + rng.below(16)).min(input.len());
                input.drain(a..b);
            }
            3 if !input.is_empty() => {
                let a = rng.below(input.len());
                let b = (a + rng.below(32)).min(input.len());
                let chunk = input[a..b].to_vec();
                let i = rng.below(input.len() + 1);
                input.splice(i..i, chunk);
            }
            4 => input.push(rng.next() as u8),
            _ => {
                let n = rng.below(64);
                input.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
    input.truncate(64 * 1024);
}

fn main() {
    let mut seconds = 60u64;
    let mut targets: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--seconds" {
            seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(60);
        } else {
            targets.push(a);
        }
    }
    if targets.is_empty() {
        targets = authgate_fuzz::TARGETS
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Panics are expected findings here; keep the output to our own summary.
    std::panic::set_hook(Box::new(|_| {}));
    let mut crashes = 0;
    for target in &targets {
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(root.join("seeds").join(target))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seconds ^ target.len() as u64);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut runs = 0u64;
        let mut found = 0;
        while Instant::now() < deadline {
            let mut input = if seeds.is_empty() || rng.below(8) == 0 {
                Vec::new()
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            mutate(&mut rng, &mut input);
            let t = target.clone();
            let data = input.clone();
            if std::panic::catch_unwind(move || authgate_fuzz::run(&t, &data)).is_err() {
                let mut h = DefaultHasher::new();
                input.hash(&mut h);
                let path = root
                    .join("regressions")
                    .join(target)
                    .join(format!("crash-{:016x}", h.finish()));
                let _ = std::fs::create_dir_all(path.parent().unwrap_or(&root));
                let _ = std::fs::write(&path, &input);
                eprintln!("fuzz {target}: CRASH saved to {}", path.display());
                found += 1;
                if found >= 5 {
                    break;
                }
            }
            runs += 1;
        }
        println!("fuzz {target}: {runs} inputs in {seconds} s, {found} crashes");
        crashes += found;
    }
    if crashes > 0 {
        eprintln!("fuzz: {crashes} crashing inputs saved; they now fail `cargo test -p authgate-fuzz` until fixed");
        std::process::exit(1);
    }
}
