//! Command line: `authgate [--config FILE]`, `authgate check --config FILE`, `--version`.

use crate::config::{self, env::ProcessEnv, Source};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "authgate", version, about = "Edge authentication gateway")]
pub struct Cli {
    /// Configuration file (YAML). Without it, the embedded demo configuration is used.
    #[arg(long, env = "AUTHGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and validate the configuration, print a summary, and exit.
    Check,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = cli.config.clone().map_or(Source::Embedded, Source::File);
    match cli.command {
        Some(Command::Check) => check(&source),
        None => {
            crate::logging::init();
            match crate::runtime::run(source) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "authgate cannot start");
                    crate::logging::flush(std::time::Duration::from_secs(1));
                    eprintln!("authgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The file compiled (the listener's certificate loaded with it), then built as start-up
/// would build it, offline (`Snapshot::check`: no DNS, no Redis, no identity provider asked):
/// what start-up or a reload would refuse, this refuses.
fn check(source: &Source) -> ExitCode {
    match config::load(source, &ProcessEnv) {
        Ok(cfg) => {
            let summary = cfg.summary();
            for w in &cfg.warnings {
                eprintln!("  warning: {w}");
            }
            match crate::snapshot::Snapshot::check(cfg) {
                Ok(()) => {
                    println!("{}: {summary}", source.describe());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: 1 problem(s)", source.describe());
                    eprintln!("  {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(errors) => {
            eprintln!("{}: {} problem(s)", source.describe(), errors.0.len());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    }
}
