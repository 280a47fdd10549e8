//! A stock pingora 0.9 plain HTTP proxy: the baseline authgate is measured against.
//!
//! Deliberately untuned: glibc malloc and pingora's default `ServerConf` (work stealing on).
//!
//! `pingora-plain --listen 127.0.0.1:8081 --upstream 127.0.0.1:8000 --threads 1`

mod plain;

fn main() -> std::process::ExitCode {
    plain::run(plain::Tuning {
        name: "pingora-plain",
        work_stealing: true,
    })
}
