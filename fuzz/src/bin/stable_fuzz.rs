//! The fuzz targets on a stable toolchain: seeds, then seeded mutations, for a time per target.
//!
//! `stable_fuzz <target|all> [--seconds N] [--seed S]`; exit status 1 (with the input saved
//! under `artifacts/`) when a target panics.

use std::process::ExitCode;
use std::time::Duration;

use snapback_fuzz::{run, Target};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut which = None;
    let mut seconds = 10.0f64;
    let mut seed = 1u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => match it.next().and_then(|s| s.parse().ok()) {
                Some(s) => seconds = s,
                None => return usage("--seconds needs a number"),
            },
            "--seed" => match it.next().and_then(|s| s.parse().ok()) {
                Some(s) => seed = s,
                None => return usage("--seed needs a whole number"),
            },
            name if which.is_none() => which = Some(name.to_string()),
            other => return usage(&format!("unexpected argument {other:?}")),
        }
    }
    let targets: Vec<Target> = match which.as_deref() {
        None | Some("all") => Target::ALL.to_vec(),
        Some(name) => match Target::from_name(name) {
            Some(t) => vec![t],
            None => return usage(&format!("no target {name:?}")),
        },
    };
    for t in targets {
        let stats = run(t, Duration::from_secs_f64(seconds.max(0.0)), seed);
        println!(
            "stable_fuzz: {:<18} {:>9} inputs in {:.1}s, no panic (seed {seed})",
            t.name(),
            stats.execs,
            stats.elapsed.as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
    eprintln!(
        "stable_fuzz: {problem}\nusage: stable_fuzz <{}|all> [--seconds N] [--seed S]",
        names.join("|")
    );
    ExitCode::from(2)
}
