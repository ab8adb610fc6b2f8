//! Log setup: human-readable on a terminal, JSON lines for the sidecar.

use tracing_subscriber::EnvFilter;

use super::GlobalArgs;

/// Installs the global subscriber; `RUST_LOG` overrides the level from `-q`/`-v`.
pub fn init(args: &GlobalArgs) {
    let level = match (args.quiet, args.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new({
        // Other crates (opendal's retry notices, say) only when asked for more than the default.
        let others = if args.verbose > 0 { level } else { "error" };
        format!("{others},snapback={level},snapback_repo={level},snapback_archive={level},snapback_stream={level}")
    }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.with_target(false).without_time().init();
    }
}
