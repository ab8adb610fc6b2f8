//! `snapback forget`: removes snapshots by keep policy (or by id), optionally pruning after.

use std::process::ExitCode;

use anyhow::Context;
use snapback_maintenance::forget::GroupReport;
use snapback_maintenance::{
    forget, forget_ids, Action, ExpirePolicy, ForgetOptions, GroupBy, KeepDuration, SnapshotFilter,
    TagList,
};

use super::GlobalArgs;

/// Arguments of `snapback forget` (restic's names and short flags).
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// Snapshots to remove by id (instead of a policy).
    pub snapshots: Vec<String>,
    /// Keep the last N snapshots.
    #[arg(short = 'l', long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the last N hourly snapshots.
    #[arg(short = 'H', long, default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the last N daily snapshots.
    #[arg(short = 'd', long, default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the last N weekly snapshots.
    #[arg(short = 'w', long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the last N monthly snapshots.
    #[arg(short = 'm', long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the last N yearly snapshots.
    #[arg(short = 'y', long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep snapshots newer than the newest minus this duration (e.g. 1y5m7d2h).
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Keep snapshots with all of these comma-separated tags (repeatable).
    #[arg(long)]
    pub keep_tag: Vec<String>,
    /// Only snapshots of this host (repeatable).
    #[arg(long)]
    pub host: Vec<String>,
    /// Only snapshots with all of these comma-separated tags (repeatable: any list).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Only snapshots including this path (repeatable: all of them).
    #[arg(long)]
    pub path: Vec<String>,
    /// Group snapshots by these fields: host, paths, tags (comma separated; "" for one group).
    #[arg(short = 'g', long, default_value = "host,paths")]
    pub group_by: String,
    /// Print what would be removed, remove nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Prune the repository afterwards when snapshots were removed.
    #[arg(long)]
    pub prune: bool,
    /// With --prune: unused space tolerated after pruning (see `prune --max-unused`).
    #[arg(long, default_value = "5%")]
    pub max_unused: String,
    /// Print the decisions as JSON (the shape of `restic forget --json`).
    #[arg(long)]
    pub json: bool,
}

/// Applies the policy.
pub async fn run(global: &GlobalArgs, args: &ForgetArgs) -> anyhow::Result<ExitCode> {
    let repo = super::repo::open(global).await?;
    if !args.snapshots.is_empty() {
        let ids = forget_ids(&repo, &args.snapshots, args.dry_run).await?;
        for id in &ids {
            if args.dry_run {
                println!("would remove snapshot {}", id.short());
            } else {
                println!("removed snapshot {}", id.short());
            }
        }
        return maybe_prune(&repo, args, ids.len()).await;
    }
    let within = args
        .keep_within
        .as_deref()
        .map(str::parse::<KeepDuration>)
        .transpose()?;
    let opts = ForgetOptions {
        policy: ExpirePolicy {
            last: args.keep_last,
            hourly: args.keep_hourly,
            daily: args.keep_daily,
            weekly: args.keep_weekly,
            monthly: args.keep_monthly,
            yearly: args.keep_yearly,
            within,
            tags: parse_tags(&args.keep_tag),
        },
        group_by: args.group_by.parse::<GroupBy>()?,
        filter: SnapshotFilter {
            hosts: args.host.clone(),
            tags: parse_tags(&args.tag),
            paths: args.path.clone(),
            exclude_tags: Vec::new(),
        },
        dry_run: args.dry_run,
    };
    if opts.policy.is_empty() {
        eprintln!("no policy was specified, no snapshots will be removed");
        return Ok(ExitCode::SUCCESS);
    }
    let report = forget(&repo, &opts).await?;
    if args.json {
        let groups: Vec<serde_json::Value> = report
            .groups
            .iter()
            .map(|g| group_json(g, opts.group_by))
            .collect();
        println!("{}", serde_json::to_string(&groups)?);
    } else {
        print_text(&report.groups, &opts);
        let verb = if report.deleted {
            "removed"
        } else {
            "would remove"
        };
        if !report.removed.is_empty() {
            println!("{verb} {} snapshots", report.removed.len());
        }
    }
    maybe_prune(&repo, args, report.removed.len()).await
}

async fn maybe_prune(
    repo: &snapback_repo::Repository,
    args: &ForgetArgs,
    removed: usize,
) -> anyhow::Result<ExitCode> {
    if !args.prune || removed == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        println!("{removed} snapshots have been removed, running prune");
    }
    let opts = snapback_maintenance::PruneOptions {
        dry_run: args.dry_run,
        max_unused_percent: super::prune::parse_max_unused(&args.max_unused)?,
        ..Default::default()
    };
    let report = snapback_maintenance::prune(repo, &opts)
        .await
        .context("prune after forget")?;
    if !args.json {
        super::prune::print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_tags(values: &[String]) -> Vec<TagList> {
    values
        .iter()
        .filter_map(|v| v.parse::<TagList>().ok())
        .collect()
}

fn print_text(groups: &[GroupReport], opts: &ForgetOptions) {
    println!("Applying Policy: {}", opts.policy);
    for g in groups {
        let heading = g.key.describe(opts.group_by);
        if !heading.is_empty() {
            println!("snapshots for ({heading}):");
        }
        for action in [Action::Keep, Action::Remove] {
            let rows: Vec<_> = g
                .snapshots
                .iter()
                .filter(|(_, d)| d.action == action)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let word = if action == Action::Keep {
                "keep"
            } else {
                "remove"
            };
            println!("{word} {} snapshots:", rows.len());
            println!(
                "{:<10} {:<20} {:<16} {:<20} {:<30} Paths",
                "ID", "Time", "Host", "Tags", "Reasons"
            );
            for (s, d) in rows {
                println!(
                    "{:<10} {:<20} {:<16} {:<20} {:<30} {}",
                    d.id.short(),
                    s.time
                        .with_timezone(&chrono::Local)
                        .format("%Y-%m-%d %H:%M:%S"),
                    s.hostname,
                    s.tags.join(","),
                    d.reasons.join(", "),
                    s.paths.join(", ")
                );
            }
            println!();
        }
    }
}

fn snapshot_json(
    s: &snapback_repo::file::SnapshotFile,
    id: &snapback_repo::Id,
) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("id".into(), id.to_hex().into());
        obj.insert("short_id".into(), id.short().into());
    }
    v
}

fn group_json(g: &GroupReport, by: GroupBy) -> serde_json::Value {
    let pick = |action: Action| -> Vec<serde_json::Value> {
        g.snapshots
            .iter()
            .filter(|(_, d)| d.action == action)
            .map(|(s, d)| snapshot_json(s, &d.id))
            .collect()
    };
    let reasons: Vec<serde_json::Value> = g
        .snapshots
        .iter()
        .filter(|(_, d)| d.action == Action::Keep)
        .map(|(s, d)| serde_json::json!({ "snapshot": snapshot_json(s, &d.id), "matches": d.reasons }))
        .collect();
    serde_json::json!({
        "tags": if by.tags { serde_json::json!(g.key.tags) } else { serde_json::Value::Null },
        "host": g.key.host,
        "paths": if by.paths { serde_json::json!(g.key.paths) } else { serde_json::Value::Null },
        "keep": pick(Action::Keep),
        "remove": pick(Action::Remove),
        "reasons": reasons,
    })
}
