//! `snapback init`: create a repository; as a Pod's initContainer also open an existing one,
//! write the warm key file and restore an empty data directory. The work is done by
//! `snapback_podinit`; this module builds its options and prints what happened.

use std::process::ExitCode;
use std::sync::Arc;

use snapback_podinit::create::{check_index, create, Created};
use snapback_podinit::restore_if_empty::{restore_if_empty, RestoreOutcome};
use snapback_repo::{InitOptions, InitOutcome};

use super::GlobalArgs;

/// Arguments of `snapback init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Repository format version (2 compresses; 1 for restic < 0.14).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub repository_version: u32,
    /// Open the repository when it exists instead of failing; safe when several Pods race.
    /// Implied by --key-file and --restore-if-empty (an initContainer's use).
    #[arg(long)]
    pub if_missing: bool,
    /// When this directory is empty or missing, restore the latest snapshot of --host into it
    /// (the contents of the snapshot's backed-up path, or of its root for a stream).
    #[arg(long, value_name = "DIR")]
    pub restore_if_empty: Option<std::path::PathBuf>,
    /// Host whose latest snapshot --restore-if-empty restores (default: as for backup,
    /// POD_NAMESPACE/POD_NAME in a Pod, else the host name).
    #[arg(long, env = "SNAPBACK_HOST")]
    pub host: Option<String>,
}

/// Creates (or, for an initContainer, opens) the repository, then writes the warm key and
/// restores, as asked.
pub async fn run(global: &GlobalArgs, args: &InitArgs) -> anyhow::Result<ExitCode> {
    let backend = super::repo::backend(global)?;
    let key_file = global.warm.key_file.as_deref();
    // Before touching the repository: a missing POD_UID should not leave a half-done init.
    let secret = match key_file {
        Some(_) => Some(super::keyfile::pod_secret(&global.warm)?),
        None => None,
    };
    let pw = super::repo::password(global)?;
    let opts = InitOptions {
        version: args.repository_version,
        ..InitOptions::default()
    };
    let init_container = args.if_missing || key_file.is_some() || args.restore_if_empty.is_some();
    let Created {
        repo,
        outcome,
        bucket_created,
    } = create(backend, &pw, opts, init_container).await?;
    drop(pw);
    if bucket_created {
        if let snapback_repo::Location::S3 {
            bucket, endpoint, ..
        } = repo.backend().location()
        {
            say(global, &format!("created bucket {bucket} at {endpoint}"));
        }
    }
    let repo = repo.with_lock_retry(global.retry_lock.unwrap_or_default());
    let verb = match outcome {
        InitOutcome::Created => "created",
        InitOutcome::Opened => "opened",
    };
    say(
        global,
        &format!(
            "{verb} restic repository {} at {}",
            repo.config().id.short(),
            repo.backend().location()
        ),
    );
    if !init_container {
        return Ok(ExitCode::SUCCESS);
    }

    let index = check_index(&repo).await?;
    if let (Some(path), Some(secret)) = (key_file, &secret) {
        super::keyfile::write(path, &repo, secret)?;
        say(
            global,
            &format!("wrote the warm key file {}", path.display()),
        );
    }
    if let Some(dir) = &args.restore_if_empty {
        let host = args
            .host
            .clone()
            .unwrap_or_else(super::backup::default_host);
        let shown = dir.display();
        match restore_if_empty(&repo, Arc::new(index), dir, &host).await? {
            RestoreOutcome::NotEmpty => {
                say(global, &format!("{shown} is not empty: nothing restored"));
            }
            RestoreOutcome::NoSnapshot => {
                say(
                    global,
                    &format!("no snapshot of host {host}: {shown} starts empty"),
                );
            }
            RestoreOutcome::Restored {
                snapshot,
                paths,
                summary,
            } => say(
                global,
                &format!(
                    "restored snapshot {} of {host} ({}) into {shown}: {} files, {} directories, \
                     {} other nodes, {} bytes",
                    snapshot.short(),
                    paths.join(" "),
                    summary.files,
                    summary.dirs,
                    summary.others,
                    summary.bytes
                ),
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn say(global: &GlobalArgs, line: &str) {
    if !global.quiet {
        println!("{line}");
    }
}
