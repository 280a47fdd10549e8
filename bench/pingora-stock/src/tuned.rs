//! The same plain pingora proxy with the two settings authgate also uses: mimalloc as the
//! global allocator and one single-threaded runtime per worker (work stealing off). The gap
//! between this and `pingora-plain` is what those settings are worth; the gap between this and
//! authgate's public route is what authgate's own phases cost.
//!
//! `pingora-tuned --listen 127.0.0.1:8082 --upstream 127.0.0.1:8000 --threads 1`

use mimalloc::MiMalloc;

mod plain;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    plain::run(plain::Tuning {
        name: "pingora-tuned",
        work_stealing: false,
    })
}
