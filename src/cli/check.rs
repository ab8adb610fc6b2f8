//! `snapback check`: verifies the repository; exit status 1 when errors were found.

use std::process::ExitCode;

use snapback_maintenance::check;

use super::GlobalArgs;

/// Arguments of `snapback check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Also download every pack and verify every blob.
    #[arg(long)]
    pub read_data: bool,
}

/// Runs the check and prints the errors (stderr) and a summary (stdout).
pub async fn run(global: &GlobalArgs, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let repo = super::repo::open(global).await?;
    let report = check(&repo, args.read_data).await?;
    println!(
        "checked {} index files, {} packs, {} snapshots, {} trees, {} data blobs{}",
        report.index_files,
        report.packs,
        report.snapshots,
        report.trees,
        report.data_blobs,
        if args.read_data {
            format!(", read all data of {} packs", report.packs_read)
        } else {
            String::new()
        }
    );
    for hint in &report.hints {
        println!("{hint}");
    }
    if report.is_ok() {
        println!("no errors were found");
        return Ok(ExitCode::SUCCESS);
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    eprintln!(
        "Fatal: repository contains errors ({} found)",
        report.errors.len()
    );
    Ok(ExitCode::from(1))
}
