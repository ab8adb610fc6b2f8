//! The warm key file: `snapback init --key-file F` writes the master key sealed to this Pod
//! (see `snapback_podinit::warm_key`); every other command given `--key-file F` opens the repository with
//! it, without the password and without the slow key derivation.
//!
//! The Pod secret is the Pod UID (`POD_UID`, from the downward API, or `--pod-uid-file`) plus a
//! key secret (`--key-secret-file`, from a Kubernetes Secret, or `SNAPBACK_KEY_SECRET`). The
//! key secret is required: the UID is no secret (anyone allowed to `get pods` reads it, and it
//! names the emptyDir's directory on the node), so a file sealed to it alone would open for
//! whoever can read the file. Secret values are read from the environment or files only,
//! never from arguments, and never logged.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use snapback_podinit::warm_key::{self, PodSecret};
use snapback_repo::{Backend, Repository};
use zeroize::Zeroizing;

/// Options of the warm key, shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct WarmKeyArgs {
    /// Warm key file: `init` writes the master key there, sealed to this Pod (mode 0400); other
    /// commands open the repository with it when it exists (no password, no key derivation).
    #[arg(long, env = "SNAPBACK_KEY_FILE", global = true, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// File holding the Pod UID the warm key is sealed to (else POD_UID is read).
    #[arg(
        long,
        env = "SNAPBACK_POD_UID_FILE",
        global = true,
        value_name = "PATH"
    )]
    pub pod_uid_file: Option<PathBuf>,
    /// File holding the key secret the warm key is sealed to besides the Pod UID (else
    /// SNAPBACK_KEY_SECRET): required with --key-file, at least 16 bytes, from a Kubernetes
    /// Secret in a Pod.
    #[arg(
        long,
        env = "SNAPBACK_KEY_SECRET_FILE",
        global = true,
        value_name = "PATH"
    )]
    pub key_secret_file: Option<PathBuf>,
}

/// Shortest key secret accepted: the sealing key is derived with BLAKE3, which is fast, so the
/// secret must be random bytes, not something guessable.
pub const MIN_KEY_SECRET_LEN: usize = 16;

/// The Pod secret from the files or the environment.
pub fn pod_secret(args: &WarmKeyArgs) -> anyhow::Result<PodSecret> {
    let uid = match &args.pod_uid_file {
        Some(path) => read_secret_file(path, "Pod UID file")?,
        None => match std::env::var_os("POD_UID") {
            Some(v) => Zeroizing::new(v.into_encoded_bytes()),
            None => Zeroizing::new(Vec::new()),
        },
    };
    // A UID is ASCII; surrounding whitespace is a quoting accident, not part of it.
    let uid = uid.trim_ascii();
    if uid.is_empty() {
        bail!(
            "the warm key needs the Pod UID: set POD_UID (downward API fieldRef metadata.uid) \
             or --pod-uid-file"
        );
    }
    let extra = match &args.key_secret_file {
        Some(path) => Some(read_secret_file(path, "key secret file")?),
        None => std::env::var_os("SNAPBACK_KEY_SECRET")
            .filter(|v| !v.is_empty())
            .map(|v| Zeroizing::new(v.into_encoded_bytes())),
    };
    let Some(extra) = extra else {
        bail!(
            "the warm key needs a key secret besides the Pod UID, which anyone allowed to read \
             the Pod knows: give --key-secret-file (a file from a Kubernetes Secret) or set \
             SNAPBACK_KEY_SECRET"
        );
    };
    if extra.is_empty() {
        bail!("the key secret file is empty");
    }
    if extra.len() < MIN_KEY_SECRET_LEN {
        bail!(
            "the key secret must hold at least {MIN_KEY_SECRET_LEN} bytes (it holds {}): use \
             random bytes, e.g. `head -c 32 /dev/urandom | base64`",
            extra.len()
        );
    }
    Ok(PodSecret::new(uid, Some(extra.as_slice()))?)
}

/// Reads a small secret file, without its trailing line break.
fn read_secret_file(path: &Path, what: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut data = Zeroizing::new(
        fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))?,
    );
    while matches!(data.last(), Some(b'\n' | b'\r')) {
        data.pop();
    }
    Ok(data)
}

/// Seals the open repository's master key to `secret` and writes it to `path` (atomically,
/// mode 0400 from creation).
pub fn write(path: &Path, repo: &Repository, secret: &PodSecret) -> anyhow::Result<()> {
    warm_key::write_file(path, repo, secret)
        .with_context(|| format!("cannot write the warm key file {}", path.display()))
}

/// Opens the repository with the warm key file, when one is configured and exists (`None`:
/// open with the password). The password is not read on this path.
pub async fn open(args: &WarmKeyArgs, backend: &Backend) -> anyhow::Result<Option<Repository>> {
    let Some(path) = &args.key_file else {
        return Ok(None);
    };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(
                path = %path.display(),
                "warm key file does not exist; opening the repository with the password"
            );
            return Ok(None);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot read the warm key file {}", path.display())))
        }
    };
    let in_file = || format!("warm key file {}", path.display());
    let header = warm_key::header(&bytes).with_context(in_file)?;
    if !header.has_key_secret {
        bail!(
            "{}: it is sealed to the Pod UID alone, which is not secret; rerun `snapback init \
             --key-file` with --key-secret-file (or SNAPBACK_KEY_SECRET) to write a new one",
            in_file()
        );
    }
    let secret = pod_secret(args)?;
    let (key, _) = warm_key::unseal(&bytes, &secret).with_context(in_file)?;
    let repo = match Repository::open_with_key(backend.clone(), key).await {
        Ok(repo) => repo,
        // The key does not open this config: it belongs to another repository.
        Err(snapback_repo::Error::Auth { file, .. }) if file == "config" => bail!(
            "{}: it holds the key of repository {} ({}), which does not open the repository \
             at {}; run `snapback init --key-file` for this repository",
            in_file(),
            header.repo_id.short(),
            header.location,
            backend.location()
        ),
        Err(e) => return Err(e.into()),
    };
    warm_key::check_repository(&header, &repo.config().id).with_context(in_file)?;
    tracing::debug!(path = %path.display(), "opened the repository with the warm key");
    Ok(Some(repo))
}
