//! The storage behaviour suite: one set of operations, run through the crate's backend API
//! ([`snapback_repo::Backend`], not the CLI) against every backend snapback supports: the
//! local filesystem, S3 (moto), Azure Blob Storage (Azurite), Google Cloud Storage
//! (fake-gcs-server) and restic's REST server (pyrestserver), all real servers on 127.0.0.1
//! started by `tests/common`.
//!
//! `behaviour!` generates one test per (backend, operation): `local::list_many`,
//! `s3::create_if_absent_race`, ... A service that lacks a feature does not skip silently: the
//! test states what the service does (see [`ATOMIC_CREATE`]) and checks that the backend
//! layer handles it the way its documentation says.

#![cfg_attr(
    not(all(
        feature = "backend-azure",
        feature = "backend-gcs",
        feature = "backend-rest"
    )),
    allow(dead_code, unused_imports, unused_macros)
)]

mod common;

use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use snapback_repo::backend::{Backend, BackendError, Location, RetryPolicy, S3Credentials};
use snapback_repo::{FileType, Id};

use common::services::{Azurite, FakeGcs, RestServer};
use common::{free_port, pseudo_random_bytes, S3Server};

/// Create-if-absent per service: whether the backend layer asks the service for it
/// ([`Backend::creates_atomically`]: elsewhere it checks and then writes, and two writers
/// racing can both win), and whether the test server honours it. Locks and the repository's
/// config rely on create-if-absent.
///
/// - local: opendal's fs service creates the file only if absent;
/// - moto: honours `If-None-Match: *` on PUT, as AWS S3 does (Garage ignores it: a store
///   that does cannot be told apart, so the claim is S3's);
/// - Azurite: honours `If-None-Match: *`;
/// - fake-gcs-server: ignores the `ifGenerationMatch=0` opendal sends (real GCS honours it):
///   every racing writer wins there;
/// - pyrestserver: restic's REST protocol has no conditional create, so the backend checks
///   first: not atomic.
const ATOMIC_CREATE: &[(&str, bool, bool)] = &[
    ("local", true, true),
    ("s3", true, true),
    ("azure", true, true),
    ("gcs", true, false),
    ("rest", false, false),
];

/// Serialises changes of the environment (which the Azure and GCS services read when a
/// backend is built) with the building of backends.
static ENV: RwLock<()> = RwLock::new(());

/// A fresh, empty place on one service (a directory, a bucket, a prefix), and what keeps it
/// alive; repositories are opened at prefixes under it.
struct Place {
    name: &'static str,
    /// Repository string of the place, without a trailing slash.
    base: String,
    creds: S3Credentials,
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

/// A backend on a repository of a [`Place`].
struct Store {
    name: &'static str,
    backend: Backend,
}

impl Place {
    fn open(&self, prefix: &str) -> Store {
        Store {
            name: self.name,
            backend: connect(&format!("{}/{prefix}", self.base), &self.creds),
        }
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_retries: 2,
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        ..RetryPolicy::default()
    }
    .with_timeout(Duration::from_secs(20))
}

fn connect(url: &str, creds: &S3Credentials) -> Backend {
    let _env = ENV.read().unwrap_or_else(|e| e.into_inner());
    Backend::new(Location::parse(url).unwrap(), creds, policy()).unwrap()
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn local() -> Option<Place> {
    let dir = tempfile::tempdir().unwrap();
    Some(Place {
        name: "local",
        base: dir.path().to_string_lossy().into_owned(),
        creds: S3Credentials::default(),
        _keep: Box::new(dir),
    })
}

fn s3() -> Option<Place> {
    // A fresh bucket on the test binary's moto server.
    let server = S3Server::start();
    Some(Place {
        name: "s3",
        base: server.repo_url(""),
        creds: S3Credentials {
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            region: Some("us-east-1".into()),
            ..S3Credentials::default()
        },
        _keep: Box::new(server),
    })
}

/// The process's Azurite (started once), with its environment set and a container made.
fn azurite() -> Option<&'static Azurite> {
    static SERVER: OnceLock<Option<Azurite>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let server = Azurite::start()?;
            server.create_container("behaviour");
            let _env = ENV.write().unwrap_or_else(|e| e.into_inner());
            for (k, v) in server.env() {
                std::env::set_var(k, v);
            }
            Some(server)
        })
        .as_ref()
}

fn azure() -> Option<Place> {
    azurite()?;
    Some(Place {
        name: "azure",
        base: format!("azure:behaviour:/{}", unique()),
        creds: S3Credentials::default(),
        _keep: Box::new(()),
    })
}

fn fake_gcs() -> Option<&'static FakeGcs> {
    static SERVER: OnceLock<Option<FakeGcs>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let server = FakeGcs::start()?;
            server.create_bucket("behaviour");
            let _env = ENV.write().unwrap_or_else(|e| e.into_inner());
            for (k, v) in server.env() {
                std::env::set_var(k, v);
            }
            Some(server)
        })
        .as_ref()
}

fn gcs() -> Option<Place> {
    fake_gcs()?;
    Some(Place {
        name: "gcs",
        base: format!("gs:behaviour:/{}", unique()),
        creds: S3Credentials::default(),
        _keep: Box::new(()),
    })
}

fn rest_server() -> Option<&'static RestServer> {
    static SERVER: OnceLock<Option<RestServer>> = OnceLock::new();
    SERVER.get_or_init(RestServer::start).as_ref()
}

fn rest() -> Option<Place> {
    let server = rest_server()?;
    Some(Place {
        name: "rest",
        base: server.repo_url(&unique()),
        creds: S3Credentials::default(),
        _keep: Box::new(()),
    })
}

/// Where the service of `name` would be if nothing listened there: a closed port.
fn unreachable_url(name: &str, port: u16) -> String {
    match name {
        "s3" => format!("s3:http://127.0.0.1:{port}/bucket/repo"),
        "azure" => "azure:behaviour:/unreachable".into(),
        "gcs" => "gs:behaviour:/unreachable".into(),
        "rest" => format!("rest:http://127.0.0.1:{port}/repo"),
        other => panic!("{other} has no endpoint"),
    }
}

fn id(n: u64) -> Id {
    Id::hash(&n.to_le_bytes())
}

fn is_not_found<T: std::fmt::Debug>(r: &Result<T, BackendError>) -> bool {
    matches!(r, Err(BackendError::NotFound { .. }))
}

/// The operations, each against one store.
mod ops {
    use super::*;

    pub async fn write_read_whole(s: &Store) {
        let b = &s.backend;
        let data = Bytes::from(pseudo_random_bytes(1, 70_000));
        b.write(FileType::Snapshot, &id(1), data.clone())
            .await
            .unwrap();
        assert_eq!(b.read(FileType::Snapshot, &id(1)).await.unwrap(), data);
        b.write_path("config", Bytes::from_static(b"cfg"))
            .await
            .unwrap();
        assert_eq!(&b.read_path("config").await.unwrap()[..], b"cfg");
        // Parts are stored back to back.
        let parts: Vec<Bytes> = (0..5u64)
            .map(|i| Bytes::from(pseudo_random_bytes(10 + i, 1000 + i as usize)))
            .collect();
        let whole: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
        // Pack ids are content hashes (restic's REST server checks them).
        let pack_id = Id::hash(&whole);
        b.write_parts(FileType::Pack, &pack_id, parts)
            .await
            .unwrap();
        assert_eq!(
            &b.read(FileType::Pack, &pack_id).await.unwrap()[..],
            &whole[..]
        );
        // A rewrite replaces (ids are content hashes: a rewrite is identical in practice).
        b.write(FileType::Snapshot, &id(1), Bytes::from_static(b"second"))
            .await
            .unwrap();
        assert_eq!(
            &b.read(FileType::Snapshot, &id(1)).await.unwrap()[..],
            b"second"
        );
        // Empty files exist and read back empty.
        b.write(FileType::Index, &id(3), Bytes::new())
            .await
            .unwrap();
        assert!(b.read(FileType::Index, &id(3)).await.unwrap().is_empty());
        assert_eq!(b.size(FileType::Index, &id(3)).await.unwrap(), 0);
    }

    pub async fn read_ranges(s: &Store) {
        let b = &s.backend;
        let data = pseudo_random_bytes(2, 100_000);
        let pack = Id::hash(&data);
        b.write(FileType::Pack, &pack, Bytes::from(data.clone()))
            .await
            .unwrap();
        for (off, len) in [(0u64, 1u64), (0, 100_000), (99_999, 1), (12_345, 54_321)] {
            let got = b.read_range(FileType::Pack, &pack, off, len).await.unwrap();
            assert_eq!(
                &got[..],
                &data[off as usize..(off + len) as usize],
                "{off}+{len}"
            );
        }
        // Streamed: reads and skips in pieces of one range.
        let mut r = b
            .read_range_stream(FileType::Pack, &pack, 1000, 50_000)
            .await
            .unwrap();
        let mut out = Vec::new();
        r.read_into(10, &mut out).await.unwrap();
        r.skip(20_000).await.unwrap();
        r.read_into(29_990, &mut out).await.unwrap();
        let mut want = data[1000..1010].to_vec();
        want.extend_from_slice(&data[21_010..51_000]);
        assert_eq!(out, want);
        // Past the range's end: an error, not bytes from beyond it.
        let e = r.read_into(1, &mut out).await.unwrap_err();
        assert!(matches!(e, BackendError::ShortRead { .. }), "{e:?}");
    }

    pub async fn zero_length_range(s: &Store) {
        let b = &s.backend;
        let data = pseudo_random_bytes(3, 4096);
        let pack = Id::hash(&data);
        b.write(FileType::Pack, &pack, Bytes::from(data))
            .await
            .unwrap();
        for off in [0u64, 100, 4096] {
            let got = b.read_range(FileType::Pack, &pack, off, 0).await.unwrap();
            assert!(got.is_empty(), "{off}: {} bytes", got.len());
            let mut r = b
                .read_range_stream(FileType::Pack, &pack, off, 0)
                .await
                .unwrap();
            let mut out = Vec::new();
            r.read_into(0, &mut out).await.unwrap();
            assert!(out.is_empty());
        }
    }

    pub async fn range_past_end(s: &Store) {
        let b = &s.backend;
        let data = pseudo_random_bytes(4, 1000);
        let pack = Id::hash(&data);
        b.write(FileType::Pack, &pack, Bytes::from(data.clone()))
            .await
            .unwrap();
        // Partly past the end, and wholly past it: never bytes that are not in the file, and
        // a range that cannot be served whole is an error.
        for (off, len) in [(990u64, 100u64), (1000, 10), (5000, 10)] {
            match b.read_range(FileType::Pack, &pack, off, len).await {
                Err(BackendError::ShortRead { .. }) => {}
                other => panic!("{off}+{len}: {other:?}"),
            }
            let streamed = match b.read_range_stream(FileType::Pack, &pack, off, len).await {
                Ok(mut r) => {
                    let mut out = Vec::new();
                    r.read_into(len as usize, &mut out).await.map(|()| out)
                }
                Err(e) => Err(e),
            };
            assert!(
                matches!(streamed, Err(BackendError::ShortRead { .. })),
                "{off}+{len} streamed: {streamed:?}"
            );
        }
    }

    pub async fn list_many(s: &Store) {
        let b = &s.backend;
        // More than 1000, S3's (and Azure's, GCS's) page size: listing must follow the pages.
        let n = 1100u64;
        // Distinct contents of 8 to 12 bytes, each stored under its hash.
        let content = |i: u64| {
            let mut d = i.to_le_bytes().to_vec();
            d.resize(8 + (i % 5) as usize, 7);
            d
        };
        let writes = (0..n).map(|i| {
            let data = content(i);
            async move {
                b.write(FileType::Pack, &Id::hash(&data), Bytes::from(data))
                    .await
            }
        });
        use futures::StreamExt;
        let results: Vec<_> = futures::stream::iter(writes)
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            r.unwrap();
        }
        for i in 0..3 {
            b.write(FileType::Index, &id(10_000 + i), Bytes::from_static(b"idx"))
                .await
                .unwrap();
        }
        // A file whose name is no id is not listed.
        b.write_path("data/00/not-an-id", Bytes::from_static(b"x"))
            .await
            .ok();
        let mut packs = b.list(FileType::Pack).await.unwrap();
        packs.sort_by_key(|l| l.id);
        let mut want: Vec<(Id, u64)> = (0..n).map(|i| (Id::hash(&content(i)), 8 + i % 5)).collect();
        want.sort();
        let got: Vec<(Id, u64)> = packs.iter().map(|l| (l.id, l.size)).collect();
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);
        let index = b.list(FileType::Index).await.unwrap();
        assert_eq!(index.len(), 3);
        assert!(index.iter().all(|l| l.size == 3));
        assert!(b.list(FileType::Snapshot).await.unwrap().is_empty());
        assert!(b.list(FileType::Lock).await.unwrap().is_empty());
    }

    pub async fn delete(s: &Store) {
        let b = &s.backend;
        b.write(FileType::Lock, &id(1), Bytes::from_static(b"lock"))
            .await
            .unwrap();
        b.write(FileType::Lock, &id(2), Bytes::from_static(b"lock"))
            .await
            .unwrap();
        b.remove(FileType::Lock, &id(1)).await.unwrap();
        assert!(is_not_found(&b.read(FileType::Lock, &id(1)).await));
        assert!(!b.exists(&FileType::Lock.path(&id(1))).await.unwrap());
        let left: Vec<Id> = b
            .list(FileType::Lock)
            .await
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(left, vec![id(2)]);
        // Deleting what is not there is not an error (a concurrent prune got there first).
        b.remove(FileType::Lock, &id(1)).await.unwrap();
        b.remove(FileType::Lock, &id(3)).await.unwrap();
    }

    pub async fn create_if_absent(s: &Store) {
        let b = &s.backend;
        assert!(b
            .write_new("config", Bytes::from_static(b"first"))
            .await
            .unwrap());
        assert!(!b
            .write_new("config", Bytes::from_static(b"second"))
            .await
            .unwrap());
        assert_eq!(&b.read_path("config").await.unwrap()[..], b"first");
    }

    pub async fn create_if_absent_race(s: &Store) {
        let b = &s.backend;
        let (claimed, honoured) = ATOMIC_CREATE
            .iter()
            .find(|(n, _, _)| *n == s.name)
            .map(|&(_, c, h)| (c, h))
            .unwrap();
        assert_eq!(
            b.creates_atomically(),
            claimed,
            "{}: the backend layer's view of create-if-absent differs from the suite's",
            s.name
        );
        if !honoured {
            eprintln!(
                "{}: create-if-absent is not atomic on this server (see ATOMIC_CREATE); \
                 write_new checks before it writes, which create_if_absent covers",
                s.name
            );
            return;
        }
        // Writers race for each name; exactly one wins, and its content stays.
        for round in 0..5 {
            let path = format!("locks/{}", id(100 + round));
            let tries = (0..8u8).map(|w| {
                let path = path.clone();
                async move {
                    let won = b.write_new(&path, Bytes::from(vec![w; 64])).await.unwrap();
                    (w, won)
                }
            });
            let results = futures::future::join_all(tries).await;
            let winners: Vec<u8> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
            assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
            assert_eq!(
                &b.read_path(&path).await.unwrap()[..],
                &[winners[0]; 64][..],
                "round {round}"
            );
        }
    }

    pub async fn stat_and_exists(s: &Store) {
        let b = &s.backend;
        b.write(FileType::Key, &id(1), Bytes::from(vec![1u8; 1234]))
            .await
            .unwrap();
        assert_eq!(b.size(FileType::Key, &id(1)).await.unwrap(), 1234);
        assert!(b.exists(&FileType::Key.path(&id(1))).await.unwrap());
        assert!(!b.exists(&FileType::Key.path(&id(2))).await.unwrap());
        assert!(!b.exists("config").await.unwrap());
        // A bounded read takes a file up to the bound and refuses one past it.
        assert_eq!(
            b.read_path_limited(&FileType::Key.path(&id(1)), 1234)
                .await
                .unwrap()
                .len(),
            1234
        );
        let e = b
            .read_path_limited(&FileType::Key.path(&id(1)), 1233)
            .await
            .unwrap_err();
        assert!(matches!(e, BackendError::TooLarge { .. }), "{e:?}");
    }

    pub async fn missing_is_not_found(s: &Store) {
        let b = &s.backend;
        let ghost = id(404);
        assert!(is_not_found(&b.read(FileType::Snapshot, &ghost).await));
        assert!(is_not_found(&b.read_path("config").await));
        assert!(is_not_found(&b.read_path_limited("config", 1 << 20).await));
        assert!(is_not_found(&b.size(FileType::Pack, &ghost).await));
        assert!(is_not_found(
            &b.read_range(FileType::Pack, &ghost, 0, 10).await
        ));
        let streamed = match b.read_range_stream(FileType::Pack, &ghost, 0, 10).await {
            Ok(mut r) => {
                let mut out = Vec::new();
                r.read_into(10, &mut out).await
            }
            Err(e) => Err(e),
        };
        assert!(is_not_found(&streamed), "{streamed:?}");
        // An empty repository lists nothing (and a missing folder is not an error).
        assert!(b.list(FileType::Snapshot).await.unwrap().is_empty());
    }

    pub async fn prefixes_are_separate(s: &Store, other: &Store) {
        // `other` is a repository whose prefix extends this one's by a character.
        s.backend
            .write(FileType::Snapshot, &id(1), Bytes::from_static(b"a"))
            .await
            .unwrap();
        other
            .backend
            .write(FileType::Snapshot, &id(2), Bytes::from_static(b"b"))
            .await
            .unwrap();
        let mine: Vec<Id> = s
            .backend
            .list(FileType::Snapshot)
            .await
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(mine, vec![id(1)]);
        assert!(is_not_found(
            &s.backend.read(FileType::Snapshot, &id(2)).await
        ));
    }

    pub async fn unreachable_is_a_clear_error(s: &Store) {
        if s.name == "local" {
            // No endpoint: a missing repository directory is the local counterpart.
            let gone = tempfile::tempdir().unwrap().path().join("gone");
            let b = connect(&gone.to_string_lossy(), &S3Credentials::default());
            assert!(b.local_root_missing());
            assert!(is_not_found(&b.read_path("config").await));
            assert!(
                !gone.exists(),
                "a read must not create the repository directory"
            );
            return;
        }
        let port = free_port();
        let fast = RetryPolicy {
            max_retries: 1,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            ..RetryPolicy::default()
        }
        .with_timeout(Duration::from_secs(2));
        let location = Location::parse(&unreachable_url(s.name, port)).unwrap();
        let b = {
            // The Azure and GCS endpoints come from the environment: point them at the closed
            // port while this backend is built.
            let _env = ENV.write().unwrap_or_else(|e| e.into_inner());
            let var = match s.name {
                "azure" => Some("AZURE_ENDPOINT"),
                "gcs" => Some("STORAGE_EMULATOR_HOST"),
                _ => None,
            };
            let saved = var.map(|v| (v, std::env::var(v).ok()));
            if let Some(v) = var {
                std::env::set_var(
                    v,
                    match s.name {
                        "azure" => format!("http://127.0.0.1:{port}/devstoreaccount1"),
                        _ => format!("http://127.0.0.1:{port}"),
                    },
                );
            }
            let b = Backend::new(location, &S3Credentials::default(), fast);
            if let Some((v, old)) = saved {
                match old {
                    Some(old) => std::env::set_var(v, old),
                    None => std::env::remove_var(v),
                }
            }
            b.unwrap()
        };
        let started = Instant::now();
        let e = b.read_path("config").await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "took {:?}",
            started.elapsed()
        );
        assert!(!matches!(e, BackendError::NotFound { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("connect"),
            "{}: not a clear message: {msg}",
            s.name
        );
    }
}

/// One test per operation for the backend `$name` (a function `fn() -> Option<Place>` above,
/// which gives `None` where the server is not installed outside CI).
macro_rules! behaviour {
    ($name:ident) => {
        mod $name {
            use super::*;

            behaviour!(@ops $name: write_read_whole, read_ranges, zero_length_range,
                range_past_end, list_many, delete, create_if_absent, create_if_absent_race,
                stat_and_exists, missing_is_not_found, unreachable_is_a_clear_error);

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn prefixes_are_separate() {
                let Some(place) = super::$name() else { return };
                ops::prefixes_are_separate(&place.open("repo"), &place.open("repo2")).await;
            }
        }
    };
    (@ops $name:ident: $($op:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $op() {
                let Some(place) = super::$name() else { return };
                ops::$op(&place.open("repo")).await;
            }
        )*
    };
}

behaviour!(local);
behaviour!(s3);
#[cfg(feature = "backend-azure")]
behaviour!(azure);
#[cfg(feature = "backend-gcs")]
behaviour!(gcs);
#[cfg(feature = "backend-rest")]
behaviour!(rest);
