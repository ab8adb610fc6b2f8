//! `snapback snapshots`: list snapshots.

use std::process::ExitCode;

use super::GlobalArgs;

/// Arguments of `snapback snapshots`.
#[derive(Debug, clap::Args)]
pub struct SnapshotsArgs {
    /// Print JSON (the same shape as `restic snapshots --json`).
    #[arg(long)]
    pub json: bool,
    /// Only snapshots of this host.
    #[arg(long)]
    pub host: Option<String>,
}

/// Lists the snapshots.
pub async fn run(global: &GlobalArgs, args: &SnapshotsArgs) -> anyhow::Result<ExitCode> {
    let repo = super::repo::open(global).await?;
    let snaps: Vec<_> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|(_, s)| args.host.as_ref().is_none_or(|h| &s.hostname == h))
        .collect();
    if args.json {
        let list: Vec<serde_json::Value> = snaps
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("id".into(), id.to_hex().into());
                    obj.insert("short_id".into(), id.short().into());
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<10} {:<20} {:<16} Paths", "ID", "Time", "Host");
    for (id, s) in &snaps {
        println!(
            "{:<10} {:<20} {:<16} {}",
            id.short(),
            s.time
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S"),
            s.hostname,
            s.paths.join(", ")
        );
    }
    println!("{} snapshots", snaps.len());
    Ok(ExitCode::SUCCESS)
}
