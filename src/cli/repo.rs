//! Opening the repository named on the command line with the password from the environment.

use anyhow::{bail, Context};
use snapback_repo::backend::TlsOptions;
use snapback_repo::backend::{Location, RetryPolicy, S3Credentials};
use snapback_repo::{Backend, Repository};
use zeroize::Zeroizing;

use super::GlobalArgs;

/// The repository string from `--repo` / `RESTIC_REPOSITORY`.
pub fn location(global: &GlobalArgs) -> anyhow::Result<&str> {
    match global.repo.as_deref() {
        Some(r) if !r.is_empty() => Ok(r),
        _ => bail!("no repository given: use --repo or set RESTIC_REPOSITORY"),
    }
}

/// The storage backend for the repository.
pub fn backend(global: &GlobalArgs) -> anyhow::Result<Backend> {
    let mut policy = RetryPolicy::from_env();
    if let Some(secs) = global.timeout {
        policy = policy.with_timeout(std::time::Duration::from_secs(secs));
    }
    let tls = TlsOptions {
        ca_certs: global.cacert.clone(),
        insecure: global.insecure_tls,
    };
    Ok(Backend::with_tls(
        Location::parse(location(global)?)?,
        &S3Credentials::from_env(),
        policy,
        &tls,
    )?)
}

/// The password from `--password-file` / `RESTIC_PASSWORD_FILE` or `RESTIC_PASSWORD`. Never
/// taken from a command-line argument, so it cannot show up in `ps`.
pub fn password(global: &GlobalArgs) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    if let Some(path) = &global.password_file {
        let mut text = std::fs::read(path)
            .with_context(|| format!("cannot read password file {}", path.display()))?;
        // restic strips one trailing newline.
        if text.last() == Some(&b'\n') {
            text.pop();
            if text.last() == Some(&b'\r') {
                text.pop();
            }
        }
        return Ok(Zeroizing::new(text));
    }
    match std::env::var_os("RESTIC_PASSWORD") {
        Some(p) if !p.is_empty() => Ok(Zeroizing::new(p.into_encoded_bytes())),
        _ => bail!("no password given: set RESTIC_PASSWORD or RESTIC_PASSWORD_FILE"),
    }
}

/// Opens the repository with the warm key file (`--key-file`) when it exists, else with the
/// password; its locks wait `--retry-lock` for a conflicting lock.
pub async fn open(global: &GlobalArgs) -> anyhow::Result<Repository> {
    let backend = backend(global)?;
    let repo = match super::keyfile::open(&global.warm, &backend).await? {
        Some(repo) => repo,
        None => Repository::open(backend, &password(global)?).await?,
    };
    Ok(repo.with_lock_retry(global.retry_lock.unwrap_or_default()))
}
