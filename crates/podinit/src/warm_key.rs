//! The "warm key": a repository's master key sealed to one Pod.
//!
//! An initContainer derives the master key from the password once (scrypt, slow on purpose) and
//! writes it sealed to a file on a memory-backed volume; the sidecar then opens the repository
//! with that key, without the password and without running the KDF again.
//!
//! Sealing: ChaCha20-Poly1305 under a key derived with BLAKE3's key derivation mode from the
//! Pod's secret (its UID, plus an extra secret). The UID binds the file to one Pod but is not
//! secret (anyone allowed to read the Pod object knows it), so the extra secret is what keeps
//! the file closed to a reader of the node's volume; callers should require it (snapback's
//! command line does). The header (magic, version, flags,
//! repository id, location) is authenticated as associated data, so none of it can be altered
//! without the file failing to open.
//!
//! File layout (version 1), all integers big-endian:
//!
//! ```text
//! offset   size  field
//! 0        8     magic "SNBKWARM"
//! 8        1     version (1)
//! 9        1     flags (bit 0: sealed with an extra key secret)
//! 10       32    repository id (the config's id)
//! 42       2     location length L
//! 44       L     repository location, UTF-8 (information only)
//! 44+L     12    random nonce
//! 56+L     80    ChaCha20-Poly1305 ciphertext of the 64-byte master key, then its 16-byte tag
//! ```

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use rand::RngCore;
use snapback_repo::{Id, Key, Repository};
use zeroize::Zeroizing;

/// First bytes of every warm key file.
pub const MAGIC: &[u8; 8] = b"SNBKWARM";
/// The file format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// BLAKE3 key-derivation context: fixed, unique to this use, never to be reused elsewhere.
pub const KDF_CONTEXT: &str = "snapback 2026 warm key v1";

const FLAG_KEY_SECRET: u8 = 0x01;
const MASTER_LEN: usize = 64;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The location is information for humans; longer ones are cut (on a character boundary).
const MAX_LOCATION: usize = 1024;
/// Magic, version, flags, repository id and location length.
const FIXED_HEADER: usize = 8 + 1 + 1 + 32 + 2;

/// Why a warm key could not be made or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WarmKeyError {
    /// The file does not start with the warm key magic.
    #[error("not a snapback warm key file")]
    NotAWarmKey,
    /// Written by a newer (or unknown) snapback.
    #[error("unsupported warm key file version {0} (this snapback reads version {VERSION})")]
    UnsupportedVersion(u8),
    /// Truncated, extended or otherwise not laid out as the format says.
    #[error("the warm key file is damaged: {0}")]
    Malformed(&'static str),
    /// Authentication failed: another Pod's secret, or a modified file.
    #[error(
        "the warm key file does not open with this Pod's secret (wrong POD_UID or key secret, \
         or the file was tampered with)"
    )]
    WrongSecret,
    /// Authentication failed and the file says it was sealed with an extra secret that was not
    /// given this time.
    #[error(
        "the warm key file does not open with this Pod's secret: it was sealed with a key \
         secret, but none was given (or the file was tampered with)"
    )]
    KeySecretMissing,
    /// Authentication failed and the file says it was sealed without an extra secret, but one
    /// was given this time.
    #[error(
        "the warm key file does not open with this Pod's secret: it was sealed without a key \
         secret, but one was given (or the file was tampered with)"
    )]
    KeySecretUnexpected,
    /// The key opened, but belongs to another repository.
    #[error(
        "the warm key file is for repository {file_repo} ({location}), not for repository \
         {repo}; run `snapback init` with this repository to write a new one"
    )]
    WrongRepository {
        /// Short id of the repository the file was sealed for.
        file_repo: String,
        /// Short id of the repository being opened.
        repo: String,
        /// Location recorded in the file.
        location: String,
    },
    /// A Pod secret needs a non-empty Pod UID.
    #[error("the Pod UID is empty")]
    EmptyPodUid,
    /// An extra secret, when given, must not be empty (it would add nothing).
    #[error("the key secret is empty")]
    EmptyKeySecret,
}

/// The per-Pod secret a warm key is sealed to: the Pod UID (unique per Pod, but readable by
/// anyone allowed to `get pods`, so it binds rather than protects) and an extra secret (from a
/// Kubernetes Secret: the part an attacker lacks). Its bytes are wiped on drop.
pub struct PodSecret {
    /// Unambiguous encoding of the UID and the extra secret: the input of the key derivation.
    material: Zeroizing<Vec<u8>>,
    has_key_secret: bool,
}

impl PodSecret {
    /// A secret from the Pod UID and, optionally, an extra secret. Callers trim whitespace
    /// (such as a file's trailing newline) before.
    pub fn new(pod_uid: &[u8], key_secret: Option<&[u8]>) -> Result<Self, WarmKeyError> {
        if pod_uid.is_empty() {
            return Err(WarmKeyError::EmptyPodUid);
        }
        if key_secret.is_some_and(<[u8]>::is_empty) {
            return Err(WarmKeyError::EmptyKeySecret);
        }
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        let extra = key_secret.unwrap_or_default();
        let mut material = Zeroizing::new(Vec::with_capacity(17 + pod_uid.len() + extra.len()));
        material.extend_from_slice(&(pod_uid.len() as u64).to_be_bytes());
        material.extend_from_slice(pod_uid);
        material.push(u8::from(key_secret.is_some()));
        material.extend_from_slice(&(extra.len() as u64).to_be_bytes());
        material.extend_from_slice(extra);
        Ok(PodSecret {
            material,
            has_key_secret: key_secret.is_some(),
        })
    }

    /// Whether an extra secret is part of this secret.
    pub fn has_key_secret(&self) -> bool {
        self.has_key_secret
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        let key = Zeroizing::new(blake3::derive_key(KDF_CONTEXT, &self.material));
        ChaCha20Poly1305::new((&*key).into())
    }
}

impl std::fmt::Debug for PodSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodSecret")
            .field("material", &"<redacted>")
            .field("has_key_secret", &self.has_key_secret)
            .finish()
    }
}

/// The unencrypted part of a warm key file (readable without the secret, but authenticated
/// only by [`unseal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u8,
    /// Whether it was sealed with an extra key secret.
    pub has_key_secret: bool,
    /// The repository the key belongs to.
    pub repo_id: Id,
    /// Where that repository was, as recorded at sealing (information only).
    pub location: String,
}

/// Seals `master` for repository `repo_id`, recording no location.
pub fn seal(master: &Key, repo_id: Id, secret: &PodSecret) -> Vec<u8> {
    seal_with_location(master, repo_id, "", secret)
}

/// Seals `master` for repository `repo_id`, recording `location` for information.
pub fn seal_with_location(
    master: &Key,
    repo_id: Id,
    location: &str,
    secret: &PodSecret,
) -> Vec<u8> {
    let location = cut(location, MAX_LOCATION);
    let mut out = Vec::with_capacity(FIXED_HEADER + location.len() + NONCE_LEN + MASTER_LEN + 16);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(if secret.has_key_secret {
        FLAG_KEY_SECRET
    } else {
        0
    });
    out.extend_from_slice(&repo_id.0);
    // `cut` keeps it far below u16::MAX.
    out.extend_from_slice(&(location.len() as u16).to_be_bytes());
    out.extend_from_slice(location.as_bytes());
    let aad_end = out.len();

    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    // Encrypted in a wiped buffer, so the plaintext key is never copied into `out`.
    let mut buf = Zeroizing::new(*master.as_bytes());
    let tag = match secret.cipher().encrypt_in_place_detached(
        Nonce::from_slice(&nonce),
        &out[..aad_end],
        &mut buf[..],
    ) {
        Ok(tag) => tag,
        Err(_) => unreachable!("ChaCha20-Poly1305 only refuses messages of over 256 GiB"),
    };
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf[..]);
    out.extend_from_slice(&tag);
    out
}

/// Parses the header (magic, version, layout) without authenticating anything.
pub fn header(bytes: &[u8]) -> Result<Header, WarmKeyError> {
    parse(bytes).map(|(h, _)| h)
}

/// Opens a warm key file: returns the master key and the repository id it was sealed for.
/// Check the id against the opened repository with [`check_repository`].
pub fn unseal(bytes: &[u8], secret: &PodSecret) -> Result<(Key, Id), WarmKeyError> {
    let (header, aad_end) = parse(bytes)?;
    let (nonce, rest) = bytes[aad_end..].split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(MASTER_LEN);
    let mut buf = Zeroizing::new([0u8; MASTER_LEN]);
    buf.copy_from_slice(ciphertext);
    let opened = secret.cipher().decrypt_in_place_detached(
        Nonce::from_slice(nonce),
        &bytes[..aad_end],
        &mut buf[..],
        Tag::from_slice(tag),
    );
    if opened.is_err() {
        // The flag is only a hint for the message: it is authenticated, so a flipped flag
        // fails here too.
        return Err(match (header.has_key_secret, secret.has_key_secret) {
            (true, false) => WarmKeyError::KeySecretMissing,
            (false, true) => WarmKeyError::KeySecretUnexpected,
            _ => WarmKeyError::WrongSecret,
        });
    }
    Ok((Key::from_bytes(*buf), header.repo_id))
}

/// Checks that the repository opened with an unsealed key is the one the file was sealed for.
pub fn check_repository(header: &Header, opened_repo: &Id) -> Result<(), WarmKeyError> {
    if header.repo_id == *opened_repo {
        return Ok(());
    }
    Err(WarmKeyError::WrongRepository {
        file_repo: header.repo_id.short(),
        repo: opened_repo.short(),
        location: if header.location.is_empty() {
            "location not recorded".into()
        } else {
            header.location.clone()
        },
    })
}

/// Validates the layout; returns the header and where the authenticated header ends.
fn parse(bytes: &[u8]) -> Result<(Header, usize), WarmKeyError> {
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) {
            WarmKeyError::Malformed("truncated")
        } else {
            WarmKeyError::NotAWarmKey
        });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(WarmKeyError::NotAWarmKey);
    }
    let Some(&version) = bytes.get(8) else {
        return Err(WarmKeyError::Malformed("truncated"));
    };
    if version != VERSION {
        return Err(WarmKeyError::UnsupportedVersion(version));
    }
    if bytes.len() < FIXED_HEADER {
        return Err(WarmKeyError::Malformed("truncated"));
    }
    let flags = bytes[9];
    if flags & !FLAG_KEY_SECRET != 0 {
        return Err(WarmKeyError::Malformed("unknown flags"));
    }
    let mut repo_id = [0u8; 32];
    repo_id.copy_from_slice(&bytes[10..42]);
    let loc_len = usize::from(u16::from_be_bytes([bytes[42], bytes[43]]));
    let aad_end = FIXED_HEADER + loc_len;
    let expected = aad_end + NONCE_LEN + MASTER_LEN + TAG_LEN;
    if bytes.len() < expected {
        return Err(WarmKeyError::Malformed("truncated"));
    }
    if bytes.len() > expected {
        return Err(WarmKeyError::Malformed(
            "unexpected bytes after the sealed key",
        ));
    }
    let location = std::str::from_utf8(&bytes[FIXED_HEADER..aad_end])
        .map_err(|_| WarmKeyError::Malformed("location is not UTF-8"))?
        .to_string();
    Ok((
        Header {
            version,
            has_key_secret: flags & FLAG_KEY_SECRET != 0,
            repo_id: Id(repo_id),
            location,
        },
        aad_end,
    ))
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Seals the open repository's master key to `secret` and writes it to `path` atomically:
/// readers see the old file or the whole new one, never a partial one, and the file is mode
/// 0400 from its creation.
pub fn write_file(path: &Path, repo: &Repository, secret: &PodSecret) -> io::Result<()> {
    let sealed = seal_with_location(
        repo.key(),
        repo.config().id,
        &repo.backend().location().to_string(),
        secret,
    );
    write_private(path, &sealed)
}

/// Writes a temporary file beside `path` and renames it over `path`. The file is created 0400
/// (`O_EXCL`, so an existing file or symlink at the temporary name is never written through)
/// and is never chmod-ed later.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no file",
        ));
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{nanos:08x}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)?;
    let written = file
        .write_all(data)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename durable; a failure here leaves a complete file, so it is not an error.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &[u8] = b"6f1c2a9e-3b7d-4c1e-9a55-0d2f8e4b7c11";

    fn secret() -> PodSecret {
        PodSecret::new(UID, None).unwrap()
    }

    #[test]
    fn key_file_is_written_whole_and_private_and_replaced_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("warm.key");
        write_private(&path, b"first").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        // A read-only file is replaced by a rename, not written through.
        write_private(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        assert!(write_private(Path::new("/"), b"x").is_err());
    }

    #[test]
    fn round_trip_with_and_without_key_secret() {
        let master = Key::random();
        let repo = Id::random();
        let sealed = seal_with_location(&master, repo, "s3:http://h/b/p", &secret());
        let (key, id) = unseal(&sealed, &secret()).unwrap();
        assert_eq!(key.as_bytes(), master.as_bytes());
        assert_eq!(id, repo);
        let h = header(&sealed).unwrap();
        assert_eq!(
            h,
            Header {
                version: 1,
                has_key_secret: false,
                repo_id: repo,
                location: "s3:http://h/b/p".into()
            }
        );
        assert_eq!(
            sealed.len(),
            FIXED_HEADER + 15 + NONCE_LEN + MASTER_LEN + TAG_LEN
        );

        let with = PodSecret::new(UID, Some(b"extra")).unwrap();
        let sealed = seal(&master, repo, &with);
        let (key, _) = unseal(&sealed, &PodSecret::new(UID, Some(b"extra")).unwrap()).unwrap();
        assert_eq!(key.as_bytes(), master.as_bytes());
        assert!(header(&sealed).unwrap().has_key_secret);
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let master = Key::random();
        let repo = Id::random();
        assert_ne!(
            seal(&master, repo, &secret()),
            seal(&master, repo, &secret())
        );
    }

    #[test]
    fn wrong_secret_is_rejected_with_a_clear_error() {
        let master = Key::random();
        let sealed = seal(&master, Id::random(), &secret());
        let other = PodSecret::new(b"another-pod-uid", None).unwrap();
        let err = unseal(&sealed, &other).unwrap_err();
        assert_eq!(err, WarmKeyError::WrongSecret);
        assert!(err.to_string().contains("wrong POD_UID or key secret"));

        let with_extra = PodSecret::new(UID, Some(b"x")).unwrap();
        assert_eq!(
            unseal(&sealed, &with_extra).unwrap_err(),
            WarmKeyError::KeySecretUnexpected
        );
        let sealed = seal(&master, Id::random(), &with_extra);
        assert_eq!(
            unseal(&sealed, &secret()).unwrap_err(),
            WarmKeyError::KeySecretMissing
        );
        let wrong_extra = PodSecret::new(UID, Some(b"y")).unwrap();
        assert_eq!(
            unseal(&sealed, &wrong_extra).unwrap_err(),
            WarmKeyError::WrongSecret
        );
    }

    #[test]
    fn secret_parts_cannot_be_shifted() {
        // UID "ab" + secret "c" must not equal UID "a" + secret "bc".
        let a = PodSecret::new(b"ab", Some(b"c")).unwrap();
        let b = PodSecret::new(b"a", Some(b"bc")).unwrap();
        let sealed = seal(&Key::random(), Id::random(), &a);
        assert_eq!(unseal(&sealed, &b).unwrap_err(), WarmKeyError::WrongSecret);
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let sealed = seal_with_location(&Key::random(), Id::random(), "local:/r", &secret());
        for i in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                let err = unseal(&bad, &secret()).err();
                assert!(err.is_some(), "byte {i} bit {bit:#x} went unnoticed");
                if i >= FIXED_HEADER {
                    // Past the fixed header a change is caught by authentication (or, for the
                    // location length, by the layout).
                    assert!(
                        matches!(
                            err,
                            Some(WarmKeyError::WrongSecret | WarmKeyError::Malformed(_))
                        ),
                        "byte {i}: {err:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn truncated_and_extended_files_are_rejected() {
        let sealed = seal(&Key::random(), Id::random(), &secret());
        for len in 0..sealed.len() {
            let err = unseal(&sealed[..len], &secret()).unwrap_err();
            assert_eq!(err, WarmKeyError::Malformed("truncated"), "length {len}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(matches!(
            unseal(&longer, &secret()),
            Err(WarmKeyError::Malformed(_))
        ));
        assert_eq!(
            unseal(b"{\"not\": \"a key\"}", &secret()).unwrap_err(),
            WarmKeyError::NotAWarmKey
        );
        let mut future = sealed;
        future[8] = 2;
        assert_eq!(
            unseal(&future, &secret()).unwrap_err(),
            WarmKeyError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn file_never_contains_the_master_key() {
        for _ in 0..20 {
            let master = Key::random();
            let sealed = seal_with_location(&master, Id::random(), "local:/x", &secret());
            // No 8-byte run of the key anywhere (a random match has odds of about 2^-57).
            for window in master.as_bytes().windows(8) {
                assert!(
                    !sealed.windows(8).any(|w| w == window),
                    "master key bytes found in the sealed file"
                );
            }
        }
    }

    #[test]
    fn repository_mismatch_is_named() {
        let repo = Id::random();
        let sealed = seal_with_location(&Key::random(), repo, "s3:http://h/b/p", &secret());
        let h = header(&sealed).unwrap();
        check_repository(&h, &repo).unwrap();
        let other = Id::random();
        let err = check_repository(&h, &other).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&repo.short()) && msg.contains(&other.short()),
            "{msg}"
        );
        assert!(msg.contains("s3:http://h/b/p"), "{msg}");
    }

    #[test]
    fn empty_secrets_are_refused_and_debug_is_redacted() {
        assert_eq!(
            PodSecret::new(b"", None).unwrap_err(),
            WarmKeyError::EmptyPodUid
        );
        assert_eq!(
            PodSecret::new(UID, Some(b"")).unwrap_err(),
            WarmKeyError::EmptyKeySecret
        );
        let dbg = format!("{:?}", PodSecret::new(UID, Some(b"hunter2")).unwrap());
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("6f1c2a9e"),
            "{dbg}"
        );
    }
}
