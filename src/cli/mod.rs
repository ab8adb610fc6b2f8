//! Command-line interface: argument parsing and the subcommands. Only this layer turns typed
//! library errors into messages and exit codes.

pub mod args;
pub mod backup;
pub mod check;
pub mod dump;
pub mod forget;
pub mod init;
pub mod keyfile;
pub mod logging;
pub mod ls;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod sidecar;
pub mod snapshots;
pub mod tar;
pub mod unlock;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code when the backup finished but some files could not be read (as restic).
pub const EXIT_PARTIAL: u8 = 3;

/// Streaming, encrypted, deduplicating backups into restic-compatible repositories.
#[derive(Debug, Parser)]
#[command(name = "snapback", version, about)]
pub struct Cli {
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every subcommand.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Repository: /path, local:/path or s3:http(s)://host:port/bucket/prefix.
    #[arg(short = 'r', long = "repo", env = "RESTIC_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// File holding the repository password (else RESTIC_PASSWORD is read).
    #[arg(long, env = "RESTIC_PASSWORD_FILE", global = true)]
    pub password_file: Option<std::path::PathBuf>,
    /// Less output (warnings and errors only).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More output (repeat for debug logs).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Seconds one storage request may go unanswered (S3 or local). An operation gets three
    /// timed-out attempts plus the retry backoff, then the command fails. Default 60, or
    /// SNAPBACK_IO_TIMEOUT_SECS.
    #[arg(long, value_name = "SECS", global = true)]
    pub timeout: Option<u64>,
    /// When the repository is locked by someone else, keep trying to take the lock for this
    /// long (`30s`, `5m`, `1h30m`), pausing 1 s and then twice as long each time (at most
    /// 30 s), instead of failing at once (restic's `--retry-lock`). Applies to every command
    /// that locks, and in the sidecar to its backups and retention.
    #[arg(long, value_name = "DURATION", global = true, value_parser = parse_retry_lock)]
    pub retry_lock: Option<std::time::Duration>,
    /// Trust the CA certificates in this PEM file for https:// storage endpoints, besides the
    /// built-in roots (repeatable; also RESTIC_CACERT).
    #[arg(
        long = "cacert",
        value_name = "FILE",
        env = "RESTIC_CACERT",
        global = true
    )]
    pub cacert: Vec<std::path::PathBuf>,
    /// Do not verify the TLS certificate of https:// storage endpoints (for tests only:
    /// anyone on the path can read and change the traffic).
    #[arg(long, global = true)]
    pub insecure_tls: bool,
    /// Log as JSON lines (the sidecar's default).
    #[arg(long, global = true)]
    pub log_json: bool,
    /// The warm key file (`--key-file`) and the Pod secret it is sealed to.
    #[command(flatten)]
    pub warm: keyfile::WarmKeyArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(init::InitArgs),
    /// List snapshots.
    Snapshots(snapshots::SnapshotsArgs),
    /// Write a directory tree as a tar stream to stdout.
    Tar(tar::TarArgs),
    /// Back up paths or a stream into the repository.
    Backup(backup::BackupArgs),
    /// List the files and directories of a snapshot.
    Ls(ls::LsArgs),
    /// Restore a snapshot into a directory.
    Restore(restore::RestoreArgs),
    /// Write a file of a snapshot, or a directory as tar, to stdout.
    Dump(dump::DumpArgs),
    /// Remove snapshots by keep policy (data stays until prune).
    Forget(forget::ForgetArgs),
    /// Delete data no snapshot uses.
    Prune(prune::PruneArgs),
    /// Verify the repository (exit status 1 when it has errors).
    Check(check::CheckArgs),
    /// Remove stale locks (`--remove-all`: every lock).
    Unlock(unlock::UnlockArgs),
    /// Run as a Pod's backup daemon: scheduled and requested backups, HTTP API, metrics.
    Sidecar(Box<sidecar::SidecarArgs>),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    unlock::apply_test_lock_timing();
    match cli.command {
        Command::Tar(args) => tar::run(&args),
        Command::Backup(args) => runtime()?.block_on(backup::run(&cli.global, &args)),
        Command::Init(args) => runtime()?.block_on(init::run(&cli.global, &args)),
        Command::Snapshots(args) => runtime()?.block_on(snapshots::run(&cli.global, &args)),
        Command::Ls(args) => runtime()?.block_on(ls::run(&cli.global, &args)),
        Command::Restore(args) => runtime()?.block_on(restore::run(&cli.global, &args)),
        Command::Dump(args) => runtime()?.block_on(dump::run(&cli.global, &args)),
        Command::Forget(args) => runtime()?.block_on(forget::run(&cli.global, &args)),
        Command::Prune(args) => runtime()?.block_on(prune::run(&cli.global, &args)),
        Command::Check(args) => runtime()?.block_on(check::run(&cli.global, &args)),
        Command::Unlock(args) => runtime()?.block_on(unlock::run(&cli.global, &args)),
        Command::Sidecar(args) => runtime()?.block_on(sidecar::run(&cli.global, &args)),
    }
}

fn parse_retry_lock(text: &str) -> Result<std::time::Duration, String> {
    snapback_sidecar::parse_duration(text).map_err(|e| e.to_string())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The error and its causes on one line. A storage error stops before opendal's detail
/// (the request, response headers and context): the repository crate already said what and
/// where; [`error_chain_full`] (`-v`) keeps it.
pub fn error_chain(err: &anyhow::Error) -> String {
    chain_text(err, false)
}

/// [`error_chain`] with every cause, storage details included.
pub fn error_chain_full(err: &anyhow::Error) -> String {
    chain_text(err, true)
}

fn chain_text(err: &anyhow::Error, full: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if !full && snapback_repo::backend::is_storage_detail(cause) {
            break;
        }
        let s = cause.to_string();
        // Typed errors often repeat their source in their own message.
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
