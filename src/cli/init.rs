//! `snapback init`: create a repository.

use std::process::ExitCode;

use snapback_repo::InitOptions;

use super::GlobalArgs;

/// Arguments of `snapback init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Repository format version (2 compresses; 1 for restic < 0.14).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub repository_version: u32,
}

/// Creates the repository.
pub async fn run(global: &GlobalArgs, args: &InitArgs) -> anyhow::Result<ExitCode> {
    let backend = super::repo::backend(global)?;
    let pw = super::repo::password(global)?;
    let opts = InitOptions {
        version: args.repository_version,
        ..InitOptions::default()
    };
    let repo = snapback_repo::Repository::init(backend, &pw, opts).await?;
    println!(
        "created restic repository {} at {}",
        repo.config().id.short(),
        repo.backend().location()
    );
    Ok(ExitCode::SUCCESS)
}
