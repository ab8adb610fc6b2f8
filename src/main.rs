//! `snapback`: streaming, encrypted, deduplicating backups into restic-compatible repositories.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let mut args = cli::Cli::parse();
    cli::sidecar::adjust_global(&mut args);
    cli::logging::init(&args.global);
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // One clear line (plus causes) for the user; details were logged at debug level.
            eprintln!("snapback: {}", cli::error_chain(&err));
            ExitCode::from(1)
        }
    }
}
