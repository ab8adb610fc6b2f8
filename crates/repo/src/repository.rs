//! Opening, creating and reading/writing the files of a repository.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{Backend, BackendError, FileType};
use crate::crypto::{CryptoError, Key};
use crate::file::key::{KdfParams, KeyError};
use crate::file::tree_nodes::StoredTree;
use crate::file::{ConfigFile, KeyFile, SnapshotFile};
use crate::pack::BlobLocation;
use crate::{Error, Id, Result};

const CONFIG: &str = "config";
/// Largest key file read: restic's are about 450 bytes. Key files are parsed before anything
/// authenticates them, so their size is bounded before they are read.
pub const MAX_KEY_FILE: u64 = 64 * 1024;
/// Largest `config` file read (restic's is about 200 bytes): read before it is authenticated.
pub const MAX_CONFIG_FILE: u64 = 64 * 1024;

/// zstd level used for repository JSON files and, by default, blobs (restic's "auto").
///
/// restic's "auto" is its Go zstd encoder's default speed, which libzstd does not have: of
/// libzstd's levels, 2 gives a repository of the same size as restic's on real files (level 3
/// is a few percent smaller for about an eighth more CPU; see BENCHMARKS.md). `--compression 3`
/// or `max` trade CPU for size.
pub const DEFAULT_ZSTD_LEVEL: i32 = 2;

/// How to create a repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Format version (2: compression; 1: for old restic versions).
    pub version: u32,
    /// scrypt parameters for the first key.
    pub kdf: KdfParams,
    /// Chunker polynomial; a fresh random irreducible one when `None`.
    pub polynomial: Option<u64>,
    /// User name recorded in the key file.
    pub username: String,
    /// Host name recorded in the key file.
    pub hostname: String,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            version: 2,
            kdf: KdfParams::default(),
            polynomial: None,
            username: crate::host::username(),
            hostname: crate::host::hostname(),
        }
    }
}

/// An open repository: storage, master key and config. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Repository {
    backend: Backend,
    key: Arc<Key>,
    config: ConfigFile,
    /// How long taking a lock keeps retrying while someone else holds a conflicting one
    /// (restic's `--retry-lock`); zero fails at once.
    lock_retry: std::time::Duration,
}

/// Outcome of [`Repository::init_or_open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// This call created the repository.
    Created,
    /// It existed already (or another process won the race) and was opened.
    Opened,
}

impl Repository {
    /// Creates a new repository. Fails with [`Error::AlreadyExists`] when one is there.
    pub async fn init(backend: Backend, password: &[u8], opts: InitOptions) -> Result<Self> {
        match Self::try_init(backend, password, opts).await? {
            (repo, InitOutcome::Created) => Ok(repo),
            (repo, InitOutcome::Opened) => {
                Err(Error::AlreadyExists(repo.backend.location().to_string()))
            }
        }
    }

    /// Creates the repository unless it exists, then opens it. Safe when several processes race:
    /// exactly one config is written, the others open it with the same password.
    pub async fn init_or_open(
        backend: Backend,
        password: &[u8],
        opts: InitOptions,
    ) -> Result<(Self, InitOutcome)> {
        Self::try_init(backend, password, opts).await
    }

    async fn try_init(
        backend: Backend,
        password: &[u8],
        opts: InitOptions,
    ) -> Result<(Self, InitOutcome)> {
        if !matches!(opts.version, 1 | 2) {
            return Err(Error::UnsupportedVersion(opts.version));
        }
        if backend.exists(CONFIG).await? {
            return Ok((Self::open(backend, password).await?, InitOutcome::Opened));
        }
        let master = Key::random();
        let kdf = opts.kdf;
        let (user, host) = (opts.username.clone(), opts.hostname.clone());
        let pw = password.to_vec();
        let master_copy = master.clone();
        let keyfile = tokio::task::spawn_blocking(move || {
            KeyFile::create(&master_copy, &pw, kdf, &user, &host)
        })
        .await
        .map_err(|e| Error::format("keys", e))?
        .map_err(|source| Error::Key {
            file: "keys/<new>".into(),
            source,
        })?;
        let key_json = serde_json::to_vec(&keyfile).map_err(|e| Error::format("keys", e))?;
        let key_id = Id::hash(&key_json);
        backend
            .write(FileType::Key, &key_id, Bytes::from(key_json))
            .await?;

        let polynomial = match opts.polynomial {
            Some(p) => p,
            None => snapback_chunker::Pol::random(&mut rand::thread_rng()).0,
        };
        let config = ConfigFile {
            version: opts.version,
            id: Id::random(),
            chunker_polynomial: polynomial,
        };
        let plain = serde_json::to_vec(&config).map_err(|e| Error::format(CONFIG, e))?;
        // The config is never compressed (restic reads it before it knows the version).
        let sealed = master.encrypt(&plain);
        if !backend.write_new(CONFIG, Bytes::from(sealed)).await? {
            // Lost the race: our key file wraps a master key nobody uses.
            backend.remove(FileType::Key, &key_id).await?;
            return Ok((Self::open(backend, password).await?, InitOutcome::Opened));
        }
        tracing::info!(location = %backend.location(), id = %config.id.short(), version = config.version, "created repository");
        Ok((
            Repository {
                backend,
                key: Arc::new(master),
                config,
                lock_retry: std::time::Duration::ZERO,
            },
            InitOutcome::Created,
        ))
    }

    /// Opens the repository with `password`, trying every key file.
    ///
    /// Key files are read before anything authenticates them, so one that is too large or
    /// asks for scrypt parameters beyond [`crate::file::key::MAX_KDF_MEMORY`] is skipped with
    /// a warning rather than obeyed; it is the error only when no other key could have opened.
    pub async fn open(backend: Backend, password: &[u8]) -> Result<Self> {
        let config_data = read_config(&backend).await?;
        let keys = backend.list(FileType::Key).await?;
        // A key the password opened whose master key does not authenticate the config.
        let mut config_mismatch = false;
        let mut wrong_password = false;
        let mut refused: Option<Error> = None;
        for listed in keys {
            let path = FileType::Key.path(&listed.id);
            if listed.size > MAX_KEY_FILE {
                tracing::warn!(file = %path, size = listed.size, "skipping a key file larger than any key");
                refused.get_or_insert(Error::format(
                    path,
                    format!(
                        "{} bytes, larger than a key file can be ({MAX_KEY_FILE})",
                        listed.size
                    ),
                ));
                continue;
            }
            let kf = match load_key_file(&backend, &listed.id).await {
                Ok(kf) => kf,
                Err(e) => {
                    tracing::warn!(file = %path, error = %e, "skipping unreadable key file");
                    refused.get_or_insert(e);
                    continue;
                }
            };
            let pw = password.to_vec();
            let opened = tokio::task::spawn_blocking(move || kf.open(&pw))
                .await
                .map_err(|e| Error::format(path.clone(), e))?;
            match opened {
                Ok(master) => match decode_config(&master, &config_data) {
                    Ok(config) => return Self::finish_open(backend, master, config),
                    // A key of a repository that lost an init race (not ours), or the config
                    // is damaged: which one is known only once every key was tried.
                    Err(Error::Auth { .. }) => config_mismatch = true,
                    Err(e) => return Err(e),
                },
                Err(KeyError::WrongPassword) => wrong_password = true,
                Err(source @ (KeyError::Kdf { .. } | KeyError::KdfLimit { .. })) => {
                    tracing::warn!(file = %path, error = %source, "skipping key file");
                    refused.get_or_insert(Error::Key { file: path, source });
                }
                Err(source) => return Err(Error::Key { file: path, source }),
            }
        }
        if config_mismatch {
            return Err(Error::ConfigDamaged(backend.location().to_string()));
        }
        match refused {
            Some(e) if !wrong_password => Err(e),
            _ => Err(Error::WrongPassword),
        }
    }

    /// Opens the repository with an already unwrapped master key (no password, no KDF).
    pub async fn open_with_key(backend: Backend, master: Key) -> Result<Self> {
        let config_data = read_config(&backend).await?;
        let config = decode_config(&master, &config_data)?;
        Self::finish_open(backend, master, config)
    }

    fn finish_open(backend: Backend, master: Key, config: ConfigFile) -> Result<Self> {
        if !matches!(config.version, 1 | 2) {
            return Err(Error::UnsupportedVersion(config.version));
        }
        Ok(Repository {
            backend,
            key: Arc::new(master),
            config,
            lock_retry: std::time::Duration::ZERO,
        })
    }

    /// Lets [`Repository::lock`] (on this handle and its clones made afterwards) wait up to
    /// `wait` for a conflicting lock to go away, retrying with a growing pause, instead of
    /// failing at once (restic's `--retry-lock`).
    pub fn with_lock_retry(mut self, wait: std::time::Duration) -> Self {
        self.lock_retry = wait;
        self
    }

    /// How long taking a lock waits for a conflicting one (see [`Repository::with_lock_retry`]).
    pub fn lock_retry(&self) -> std::time::Duration {
        self.lock_retry
    }

    /// The storage.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The master key.
    pub fn key(&self) -> &Arc<Key> {
        &self.key
    }

    /// The config.
    pub fn config(&self) -> &ConfigFile {
        &self.config
    }

    /// Whether blobs and files are compressed (format version 2).
    pub fn compression(&self) -> bool {
        self.config.version >= 2
    }

    /// Loads, authenticates, decompresses and parses a JSON file.
    pub async fn load_json<T: DeserializeOwned>(&self, ft: FileType, id: &Id) -> Result<T> {
        let path = ft.path(id);
        let plain = self.load_unpacked(ft, id).await?;
        serde_json::from_slice(&plain)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
    }

    /// Loads an encrypted file and returns its plaintext (decompressed in version 2).
    pub async fn load_unpacked(&self, ft: FileType, id: &Id) -> Result<Vec<u8>> {
        let data = self.backend.read(ft, id).await?;
        self.open_unpacked(ft, id, data)
    }

    /// The second half of [`Repository::load_unpacked`], for a file already read: checks its
    /// name and MAC and decrypts it in place (no copy when `data` is not shared), then
    /// decompresses it. Lets a caller read several files at once but open them one by one.
    pub fn open_unpacked(&self, ft: FileType, id: &Id, data: Bytes) -> Result<Vec<u8>> {
        let path = ft.path(id);
        let plain = self.open_sealed(&path, id, data)?;
        self.decompress_unpacked(&path, plain)
    }

    /// Like [`Repository::open_unpacked`], but the plaintext is decompressed as the returned
    /// reader is read: a large file (an index file of 50,000 blobs is about 8 MB of JSON) is
    /// never held decompressed. Errors of the decompression surface as read errors.
    pub fn open_unpacked_reader(
        &self,
        ft: FileType,
        id: &Id,
        data: Bytes,
    ) -> Result<Box<dyn std::io::Read + Send>> {
        let path = ft.path(id);
        let plain = self.open_sealed(&path, id, data)?;
        if !self.is_compressed(&path, &plain)? {
            return Ok(Box::new(std::io::Cursor::new(plain)));
        }
        let mut compressed = std::io::Cursor::new(plain);
        compressed.set_position(1);
        let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
            .map_err(|e| Error::format(&path, format!("cannot decompress: {e}")))?;
        Ok(Box::new(decoder))
    }

    /// Checks a stored file's name and MAC and decrypts it in place.
    fn open_sealed(&self, path: &str, id: &Id, data: Bytes) -> Result<Vec<u8>> {
        // Hashed before decrypting overwrites the ciphertext; reported after the MAC check,
        // which names the more likely cause (damage, a wrong key).
        let named_right = Id::hash(&data) == *id;
        let mut buf = data
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        self.key
            .open_in_place(&mut buf)
            .map_err(|source| Error::Auth {
                file: path.to_string(),
                source,
            })?;
        if !named_right {
            return Err(Error::format(path, "content does not match its name"));
        }
        Ok(Vec::from(buf))
    }

    fn decompress_unpacked(&self, path: &str, plain: Vec<u8>) -> Result<Vec<u8>> {
        if !self.is_compressed(path, &plain)? {
            return Ok(plain);
        }
        zstd::stream::decode_all(&plain[1..])
            .map_err(|e| Error::format(path, format!("cannot decompress: {e}")))
    }

    /// Whether a decrypted file is zstd behind restic's version-2 marker byte (2), or plain
    /// JSON; an error for any other first byte.
    fn is_compressed(&self, path: &str, plain: &[u8]) -> Result<bool> {
        match plain.first() {
            Some(b'{') | Some(b'[') | None => Ok(false),
            Some(2) if self.config.version >= 2 => Ok(true),
            Some(v) => Err(Error::format(path, format!("unknown file encoding {v}"))),
        }
    }

    /// Serialises, compresses (version 2), encrypts and stores a JSON file; returns its id.
    pub async fn save_json<T: Serialize>(&self, ft: FileType, value: &T) -> Result<Id> {
        let plain = serde_json::to_vec(value).map_err(|e| Error::format(ft.dir(), e))?;
        self.save_unpacked(ft, &plain).await
    }

    /// Encrypts and stores `plain` (compressed in version 2); returns the file id.
    pub async fn save_unpacked(&self, ft: FileType, plain: &[u8]) -> Result<Id> {
        let (id, sealed) = self.seal_unpacked(ft, plain)?;
        self.save_sealed(ft, &id, sealed).await?;
        Ok(id)
    }

    /// The CPU half of [`Repository::save_unpacked`]: `plain` compressed (version 2) and
    /// encrypted, with the id it is stored under. Big files (an index) are sealed off the
    /// async threads with this, then stored with [`Repository::save_sealed`].
    pub fn seal_unpacked(&self, ft: FileType, plain: &[u8]) -> Result<(Id, Vec<u8>)> {
        let sealed = if self.compression() {
            let mut buf = vec![2u8];
            let z = zstd::bulk::compress(plain, DEFAULT_ZSTD_LEVEL)
                .map_err(|e| Error::format(ft.dir(), e))?;
            buf.extend_from_slice(&z);
            self.key.encrypt(&buf)
        } else {
            self.key.encrypt(plain)
        };
        Ok((Id::hash(&sealed), sealed))
    }

    /// Stores a file sealed by [`Repository::seal_unpacked`].
    pub async fn save_sealed(&self, ft: FileType, id: &Id, sealed: Vec<u8>) -> Result<()> {
        self.backend.write(ft, id, Bytes::from(sealed)).await?;
        Ok(())
    }

    /// All snapshots, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<(Id, SnapshotFile)>> {
        let listed = self.backend.list(FileType::Snapshot).await?;
        let mut out: Vec<(Id, SnapshotFile)> = futures::stream::iter(listed)
            .map(|l| async move {
                Ok::<_, Error>((l.id, self.load_json(FileType::Snapshot, &l.id).await?))
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Resolves `latest`, a full id or an unambiguous id prefix to a snapshot. `latest` may be
    /// narrowed by host and paths.
    pub async fn find_snapshot(
        &self,
        spec: &str,
        host: Option<&str>,
        paths: &[String],
    ) -> Result<(Id, SnapshotFile)> {
        let found = if spec == "latest" {
            self.latest_snapshot(host, paths).await?
        } else {
            let all = self.snapshots().await?;
            let mut matches = all
                .into_iter()
                .filter(|(id, _)| id.to_hex().starts_with(spec));
            let first = matches.next();
            if first.is_some() && matches.next().is_some() {
                return Err(Error::format(
                    "snapshots",
                    format!("snapshot prefix {spec:?} is ambiguous"),
                ));
            }
            first
        };
        found.ok_or_else(|| Error::format("snapshots", format!("no snapshot matches {spec:?}")))
    }

    /// The newest snapshot, narrowed by host and (as a set) paths; `None` when there is none.
    pub async fn latest_snapshot(
        &self,
        host: Option<&str>,
        paths: &[String],
    ) -> Result<Option<(Id, SnapshotFile)>> {
        Ok(self.snapshots().await?.into_iter().rfind(|(_, s)| {
            host.is_none_or(|h| s.hostname == h)
                && (paths.is_empty() || sorted(&s.paths) == sorted(paths))
        }))
    }

    /// Reads one blob: authenticates, decompresses and checks its hash.
    pub async fn load_blob(&self, id: &Id, loc: &BlobLocation) -> Result<Bytes> {
        let data = self.read_blob_encrypted(loc).await?;
        self.open_blob_owned(id, loc, data)
    }

    /// A blob's encrypted bytes, read from its pack.
    async fn read_blob_encrypted(&self, loc: &BlobLocation) -> Result<Bytes> {
        Ok(self
            .backend
            .read_range(
                FileType::Pack,
                &loc.pack,
                u64::from(loc.offset),
                u64::from(loc.length),
            )
            .await?)
    }

    /// Reads a tree blob and authenticates and decrypts it, leaving it compressed: its nodes are
    /// read one at a time ([`StoredTree::nodes`]), which also checks its length and id.
    pub async fn load_tree_stored(&self, id: &Id, loc: &BlobLocation) -> Result<StoredTree> {
        let data = self.read_blob_encrypted(loc).await?;
        self.open_tree_stored(id, loc, data)
    }

    /// [`Repository::load_tree_stored`] for an encrypted blob already read from its pack.
    pub fn open_tree_stored(
        &self,
        id: &Id,
        loc: &BlobLocation,
        encrypted: Bytes,
    ) -> Result<StoredTree> {
        let what = format!("{} (blob {})", FileType::Pack.path(&loc.pack), id.short());
        let mut buf = encrypted
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let range = self
            .key
            .open_slice(&mut buf)
            .map_err(|source| Error::Auth {
                file: what.clone(),
                source,
            })?;
        let payload = buf.freeze().slice(range);
        Ok(StoredTree::new(*id, payload, loc.uncompressed_length, what))
    }

    /// Authenticates, decompresses and hash-checks an encrypted blob already read from its pack.
    pub fn open_blob(&self, id: &Id, loc: &BlobLocation, encrypted: &[u8]) -> Result<Vec<u8>> {
        // One copy of the borrowed bytes, then the same in-place opening as every other blob.
        self.open_blob_mut(id, loc, BytesMut::from(encrypted))
            .map(Vec::from)
    }

    /// Like [`Repository::open_blob`], for an encrypted blob the caller owns: it is decrypted
    /// in place (no copy when `encrypted` is not shared), and only a compressed blob gets a
    /// new buffer, for its decompressed content.
    pub fn open_blob_owned(&self, id: &Id, loc: &BlobLocation, encrypted: Bytes) -> Result<Bytes> {
        let buf = encrypted
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        self.open_blob_mut(id, loc, buf)
    }

    /// Like [`Repository::open_blob_owned`] with buffers the caller keeps for reuse: `buf` is
    /// decrypted in place, a compressed blob is decompressed into `scratch` (its content
    /// replaced). Returns the plaintext, a part of one of them.
    pub fn open_blob_into<'a>(
        &self,
        id: &Id,
        loc: &BlobLocation,
        buf: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        Ok(match self.open_blob_parts(id, loc, buf, scratch)? {
            Plain::InPlace(range) => &buf[range],
            Plain::Scratch => scratch,
        })
    }

    /// [`Repository::open_blob_into`] for a `BytesMut`: the plaintext is `buf` itself, frozen,
    /// unless the blob was compressed.
    fn open_blob_mut(&self, id: &Id, loc: &BlobLocation, mut buf: BytesMut) -> Result<Bytes> {
        let mut scratch = Vec::new();
        Ok(
            match self.open_blob_parts(id, loc, &mut buf, &mut scratch)? {
                Plain::InPlace(range) => buf.freeze().slice(range),
                Plain::Scratch => Bytes::from(scratch),
            },
        )
    }

    /// Authenticates and decrypts `buf` in place, decompresses a compressed blob into
    /// `scratch`, and checks the plaintext's length and hash.
    fn open_blob_parts(
        &self,
        id: &Id,
        loc: &BlobLocation,
        buf: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<Plain> {
        let file = || format!("{} (blob {})", FileType::Pack.path(&loc.pack), id.short());
        let range = self.key.open_slice(buf).map_err(|source| Error::Auth {
            file: file(),
            source,
        })?;
        let (plain, at) = match loc.uncompressed_length {
            Some(n) => {
                scratch.clear();
                scratch.reserve_exact(n as usize);
                let got = zstd::bulk::Decompressor::new()
                    .and_then(|mut d| d.decompress_to_buffer(&buf[range], scratch))
                    .map_err(|e| Error::format(file(), format!("cannot decompress: {e}")))?;
                if got != n as usize {
                    return Err(Error::format(
                        file(),
                        format!("decompressed to {got} bytes, the index says {n}"),
                    ));
                }
                (&scratch[..], Plain::Scratch)
            }
            None => (&buf[range.clone()], Plain::InPlace(range)),
        };
        if Id::hash(plain) != *id {
            return Err(Error::format(file(), "blob content does not match its id"));
        }
        Ok(at)
    }

    /// Reads and parses a pack's header.
    pub async fn pack_header(&self, pack: &Id, size: u64) -> Result<Vec<crate::pack::PackedBlob>> {
        let path = FileType::Pack.path(pack);
        let guess = (crate::pack::TAIL_GUESS as u64).min(size);
        let mut tail = self
            .backend
            .read_range(FileType::Pack, pack, size - guess, guess)
            .await?;
        let hlen = crate::pack::header_length(&tail).map_err(|source| Error::Pack {
            file: path.clone(),
            source,
        })? as u64;
        if hlen + 4 > guess && hlen + 4 <= size {
            tail = self
                .backend
                .read_range(FileType::Pack, pack, size - hlen - 4, hlen + 4)
                .await?;
        }
        crate::pack::parse_header(&self.key, &tail, size)
            .map_err(|source| Error::Pack { file: path, source })
    }
}

fn sorted(v: &[String]) -> Vec<&String> {
    let mut s: Vec<&String> = v.iter().collect();
    s.sort();
    s
}

async fn read_config(backend: &Backend) -> Result<Bytes> {
    match backend.read_path_limited(CONFIG, MAX_CONFIG_FILE).await {
        Ok(d) => Ok(d),
        Err(BackendError::NotFound { .. }) if backend.local_root_missing() => {
            Err(Error::RepositoryMissing(backend.location().to_string()))
        }
        Err(BackendError::NotFound { .. }) => {
            Err(Error::NotARepository(backend.location().to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

fn decode_config(master: &Key, data: &[u8]) -> Result<ConfigFile> {
    let plain = master
        .decrypt(data)
        .map_err(|source: CryptoError| Error::Auth {
            file: CONFIG.into(),
            source,
        })?;
    serde_json::from_slice(&plain).map_err(|e| Error::format(CONFIG, format!("invalid JSON: {e}")))
}

async fn load_key_file(backend: &Backend, id: &Id) -> Result<KeyFile> {
    let data = backend
        .read_path_limited(&FileType::Key.path(id), MAX_KEY_FILE)
        .await?;
    serde_json::from_slice(&data)
        .map_err(|e| Error::format(FileType::Key.path(id), format!("invalid JSON: {e}")))
}

/// Where an opened blob's plaintext is.
enum Plain {
    /// This part of the decrypted buffer.
    InPlace(std::ops::Range<usize>),
    /// The decompression buffer.
    Scratch,
}
