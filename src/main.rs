//! `snapback`: streaming, encrypted, deduplicating backups into restic-compatible repositories.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tune_allocator();
    let mut args = cli::Cli::parse();
    cli::sidecar::adjust_global(&mut args);
    cli::logging::init(&args.global);
    let verbose = args.global.verbose > 0;
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // One clear line (plus causes) for the user; with -v every cause, storage
            // details included.
            let text = if verbose {
                cli::error_chain_full(&err)
            } else {
                cli::error_chain(&err)
            };
            eprintln!("snapback: {text}");
            ExitCode::from(1)
        }
    }
}

/// Serve every allocation of 256 KiB or more (chunks, sealed blobs, pack parts) with its own
/// mapping, returned to the OS when freed. glibc's default raises this threshold as such
/// buffers are freed and then keeps them in its arenas, so the peak memory of a stream backup
/// more than doubles without this (BENCHMARKS.md, "The allocator setting").
#[cfg(target_env = "gnu")]
fn tune_allocator() {
    // SAFETY: called first thing in main, before any other thread exists. (mallopt is glibc's
    // own tuning call: no crate wraps it safely.)
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(not(target_env = "gnu"))]
fn tune_allocator() {}
