//! upstream-mock: a small but real HTTP backend standing in for the Django/DRF LMS
//! API behind authgate, for the integration tests, the demo and the benchmarks.
//! See README.md in this crate for every endpoint.

mod app;
mod catalog;
mod cli;
mod control;
mod delay;
mod dpop;
mod echo;
mod keys;
mod mint_cmd;
mod respond;
mod server;
mod stats;
#[cfg(test)]
mod tests;
mod tokens;
mod users;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Some(cli::Command::Mint(args)) => mint_cmd::run(&args),
        Some(cli::Command::DpopProof(args)) => mint_cmd::proof(&args),
        None => server::run(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upstream-mock: {e}");
            ExitCode::FAILURE
        }
    }
}
