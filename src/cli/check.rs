//! `snapback check`: verifies the repository; exit status 1 when errors were found.

use std::process::ExitCode;

use snapback_maintenance::{check, ReadData};

use super::GlobalArgs;

/// Arguments of `snapback check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Also download every pack and verify every blob.
    #[arg(long)]
    pub read_data: bool,
    /// Download and verify only a subset of the packs, as restic does: `n/m` reads group n of
    /// m (packs by the first byte of their id, so `1/m` .. `m/m` together read all), `x%` a
    /// random share of the packs, a size (`500M`, `2G`) random packs of about that much.
    #[arg(long, value_name = "SUBSET")]
    pub read_data_subset: Option<String>,
}

/// Runs the check and prints the errors (stderr) and a summary (stdout).
pub async fn run(global: &GlobalArgs, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    // Parsed here rather than by clap, so that a bad subset exits 1 like restic, not 2.
    let read = match (&args.read_data_subset, args.read_data) {
        (Some(_), true) => {
            anyhow::bail!("--read-data and --read-data-subset cannot be used together")
        }
        (Some(subset), false) => subset.parse::<ReadData>()?,
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    let repo = super::repo::open(global).await?;
    let report = check(&repo, read).await?;
    println!(
        "checked {} index files, {} packs, {} snapshots, {} trees, {} data blobs{}",
        report.index_files,
        report.packs,
        report.snapshots,
        report.trees,
        report.data_blobs,
        match read {
            ReadData::None => String::new(),
            ReadData::All => format!(", read all data of {} packs", report.packs_read),
            subset => format!(
                ", read {subset}: {} packs, {} bytes",
                report.packs_read, report.bytes_read
            ),
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
