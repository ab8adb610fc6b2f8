//! `snapback prune`: deletes data no snapshot uses.

use std::process::ExitCode;

use anyhow::bail;
use snapback_maintenance::{prune, PruneOptions, PruneReport};

use super::GlobalArgs;

/// Arguments of `snapback prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Print what would be done, change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Unused space tolerated after pruning: a percentage of the used space ("5%", the default)
    /// or "unlimited"; "0" repacks every partly used pack.
    #[arg(long, default_value = "5%")]
    pub max_unused: String,
}

/// Prunes and prints restic-style statistics.
pub async fn run(global: &GlobalArgs, args: &PruneArgs) -> anyhow::Result<ExitCode> {
    let repo = super::repo::open(global).await?;
    let opts = PruneOptions {
        dry_run: args.dry_run,
        max_unused_percent: parse_max_unused(&args.max_unused)?,
        ..Default::default()
    };
    let report = prune(&repo, &opts).await?;
    print_report(&report);
    Ok(ExitCode::SUCCESS)
}

/// `5%`, `5`, `unlimited` → percent.
pub fn parse_max_unused(text: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    if t == "unlimited" {
        return Ok(100.0);
    }
    match t.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => bail!("invalid --max-unused {text:?}: use a percentage such as 5% or \"unlimited\""),
    }
}

/// restic's prune summary.
pub fn print_report(r: &PruneReport) {
    println!("{} snapshots, {} packs", r.snapshots, r.packs);
    println!(
        "used:         {:>10} blobs / {}",
        r.used_blobs,
        size(r.used_bytes)
    );
    println!(
        "unused:       {:>10} blobs / {}",
        r.unused_blobs,
        size(r.unused_bytes)
    );
    println!(
        "to repack:    {:>10} blobs / {} ({} packs)",
        r.repacked_blobs,
        size(r.repacked_bytes),
        r.repacked_packs.len()
    );
    println!(
        "this removes: {:>10} blobs / {}",
        r.removed_blobs,
        size(r.removed_bytes)
    );
    println!(
        "to delete:    {:>10} packs ({} unused, {} repacked, {} not in any index)",
        r.deleted_packs.len() + r.repacked_packs.len() + r.orphaned_packs.len(),
        r.deleted_packs.len(),
        r.repacked_packs.len(),
        r.orphaned_packs.len()
    );
    println!(
        "unused size after prune: {}",
        size(r.remaining_unused_bytes)
    );
    if r.applied {
        println!(
            "wrote {} packs and {} index files, removed {} old index files",
            r.new_packs, r.new_index_files, r.removed_index_files
        );
        println!("done");
    } else {
        println!("dry run: nothing was changed");
    }
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.3} {}", UNITS[unit])
    }
}
