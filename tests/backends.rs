//! The optional backends end to end against real local servers: Azure Blob Storage (Azurite),
//! Google Cloud Storage (fake-gcs-server) and restic's REST protocol (pyrestserver). snapback
//! inits, backs up (twice: the second stores no new data), lists, restores and checks through
//! each, with a pack large enough to go up in parts; restic then verifies every byte snapback
//! wrote: through the same server for `rest:` (restic 0.14 reaches it), and for Azure and GCS,
//! which restic 0.14 cannot point at an emulator, on a copy of the stored objects downloaded
//! from the server.

#![cfg_attr(
    not(all(
        feature = "backend-azure",
        feature = "backend-gcs",
        feature = "backend-rest"
    )),
    allow(dead_code, unused_imports)
)]

mod common;

use std::path::Path;

use common::services::{Azurite, FakeGcs, RestServer};
use common::{diff_trees, make_tree, pseudo_random_bytes, Restic, Snapback};

const PW: &str = "backends-password";

/// Runs snapback's whole cycle on `sb`'s repository; returns the source tree's directory
/// (inside `tmp`).
fn snapback_round_trip(sb: &Snapback, tmp: &Path) -> std::path::PathBuf {
    let out = sb.run_ok(&["init"]);
    assert!(out.contains("created restic repository"), "{out}");
    let src = tmp.join("src");
    make_tree(&src);
    // 20 MiB of incompressible data in 20 MiB packs: a pack over the multipart threshold.
    std::fs::write(src.join("big.bin"), pseudo_random_bytes(7, 20 << 20)).unwrap();
    sb.run_ok(&[
        "backup",
        "--pack-size",
        "20",
        "--compression",
        "off",
        src.to_str().unwrap(),
    ]);
    // Nothing changed: the second backup finds every file's data already stored.
    let out = sb.run_ok(&["backup", src.to_str().unwrap()]);
    assert!(out.contains("files 0 new, 0 changed"), "{out}");
    let snaps: Vec<serde_json::Value> = sb.json(&["snapshots", "--json"]);
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let target = tmp.join("restore");
    sb.run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let restored = target.join(src.strip_prefix("/").unwrap());
    let diffs = diff_trees(&src, &restored);
    assert!(diffs.is_empty(), "snapback's restore differs: {diffs:#?}");
    sb.run_ok(&["check", "--read-data"]);
    src
}

/// restic checks every byte of the repository in `repo` and restores the latest snapshot
/// equal to `src`.
fn restic_verifies(repo: &str, env: Vec<(String, String)>, src: &Path, tmp: &Path) {
    let mut restic = Restic::new(repo, PW);
    restic.set_envs(env);
    restic.run_ok(&["check", "--read-data"]);
    let snaps: Vec<serde_json::Value> = restic.json(&["snapshots", "--json"]);
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let target = tmp.join("restic-restore");
    restic.run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(src, &target.join(src.strip_prefix("/").unwrap()));
    assert!(diffs.is_empty(), "restic's restore differs: {diffs:#?}");
}

#[cfg(feature = "backend-azure")]
#[test]
fn azure_blob_storage_on_azurite() {
    require_restic!();
    let Some(azurite) = Azurite::start() else {
        return;
    };
    azurite.create_container("backups");
    let tmp = tempfile::tempdir().unwrap();
    let mut sb = Snapback::new("azure:backups:/hosts/one", PW);
    sb.set_envs(azurite.env());
    let src = snapback_round_trip(&sb, tmp.path());

    // The 20 MiB pack went up in parts (blocks), the others in one request each.
    let in_parts = azurite
        .list("backups", "hosts/one/data")
        .iter()
        .filter(|name| azurite.committed_blocks("backups", name) >= 2)
        .count();
    assert!(in_parts >= 1, "no pack was uploaded in parts");

    let copy = tmp.path().join("copy");
    let n = azurite.download("backups", "hosts/one", &copy);
    assert!(n >= 5, "only {n} blobs stored");
    restic_verifies(copy.to_str().unwrap(), vec![], &src, tmp.path());
}

#[cfg(feature = "backend-azure")]
#[test]
fn azure_settings_missing_or_wrong_are_one_clear_error() {
    let Some(azurite) = Azurite::start() else {
        return;
    };
    azurite.create_container("cfg");
    // No key at all: said before any request.
    let mut sb = Snapback::new("azure:cfg:/r", PW);
    sb.set_env("AZURE_ACCOUNT_NAME", "devstoreaccount1");
    sb.set_env("AZURE_ENDPOINT", azurite.endpoint());
    let out = sb.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AZURE_ACCOUNT_KEY or AZURE_ACCOUNT_SAS"),
        "{err}"
    );
    // A wrong key: Azurite checks the signature; init fails and stores nothing.
    sb.set_env("AZURE_ACCOUNT_KEY", "d3Jvbmcta2V5");
    let out = sb.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("snapback: Azure access denied at azure:cfg:/r ("),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let copy = tempfile::tempdir().unwrap();
    assert_eq!(azurite.download("cfg", "r", copy.path()), 0);
}

#[cfg(feature = "backend-gcs")]
#[test]
fn google_cloud_storage_on_fake_gcs_server() {
    require_restic!();
    let Some(gcs) = FakeGcs::start() else {
        return;
    };
    gcs.create_bucket("snapback-gcs");
    let tmp = tempfile::tempdir().unwrap();
    let mut sb = Snapback::new("gs:snapback-gcs:/repo", PW);
    sb.set_envs(gcs.env());
    let src = snapback_round_trip(&sb, tmp.path());

    let copy = tmp.path().join("copy");
    let n = gcs.download("snapback-gcs", "repo", &copy);
    assert!(n >= 5, "only {n} objects stored");
    restic_verifies(copy.to_str().unwrap(), vec![], &src, tmp.path());
}

#[cfg(feature = "backend-gcs")]
#[test]
fn gcs_without_credentials_outside_an_emulator_is_one_clear_error() {
    let sb = Snapback::new("gs:bucket:/r", PW);
    let out = sb.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{err}");
    let mut sb = Snapback::new("gs:bucket:/r", PW);
    sb.set_env("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json");
    let out = sb.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read GOOGLE_APPLICATION_CREDENTIALS"),
        "{err}"
    );
}

#[cfg(feature = "backend-rest")]
#[test]
fn rest_server_shared_with_restic() {
    require_restic!();
    let Some(server) = RestServer::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.repo_url("snap");
    let sb = Snapback::new(&url, PW);
    let src = snapback_round_trip(&sb, tmp.path());
    // restic reads it through the same server.
    restic_verifies(&url, vec![], &src, tmp.path());

    // And snapback reads what restic writes there.
    let url2 = server.repo_url("by-restic");
    let restic = Restic::new(&url2, PW);
    restic.run_ok(&["init"]);
    restic.run_ok(&["backup", src.to_str().unwrap()]);
    let sb2 = Snapback::new(&url2, PW);
    sb2.run_ok(&["check", "--read-data"]);
    let target = tmp.path().join("from-restic");
    sb2.run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&src, &target.join(src.strip_prefix("/").unwrap()));
    assert!(diffs.is_empty(), "{diffs:#?}");
}

#[cfg(feature = "backend-rest")]
#[test]
fn rest_credentials_from_the_url_or_restics_variables() {
    require_restic!();
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    std::fs::write(&htpasswd, "snap:s3cret-pw\n").unwrap();
    let Some(server) = RestServer::start_with_htpasswd(&htpasswd) else {
        return;
    };
    let port = server.process.port;
    // restic's variables.
    let mut sb = Snapback::new(server.repo_url("auth"), PW);
    sb.set_env("RESTIC_REST_USERNAME", "snap");
    sb.set_env("RESTIC_REST_PASSWORD", "s3cret-pw");
    let out = sb.run_ok(&["init"]);
    assert!(!out.contains("s3cret-pw"), "{out}");
    // Credentials in the URL; restic reads the same repository with them.
    let url = format!("rest:http://snap:s3cret-pw@127.0.0.1:{port}/auth");
    Snapback::new(&url, PW).run_ok(&["snapshots"]);
    Restic::new(&url, PW).run_ok(&["check"]);
    // None, or a wrong password: refused, one error, the password never shown.
    for url in [
        server.repo_url("auth"),
        format!("rest:http://snap:not-the-pw@127.0.0.1:{port}/auth"),
    ] {
        let out = Snapback::new(&url, PW).run(&["snapshots"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("401"), "{err}");
        assert!(!err.contains("not-the-pw"), "{err}");
    }
}

/// A build without a backend names the feature it lacks instead of taking the URL for a
/// local path or calling it unknown.
#[test]
fn a_backend_left_out_of_the_build_is_named() {
    for (url, scheme, feature, built) in [
        (
            "azure:c:/r",
            "azure",
            "backend-azure",
            cfg!(feature = "backend-azure"),
        ),
        (
            "gs:b:/r",
            "gs",
            "backend-gcs",
            cfg!(feature = "backend-gcs"),
        ),
        (
            "rest:http://127.0.0.1:9/r",
            "rest",
            "backend-rest",
            cfg!(feature = "backend-rest"),
        ),
    ] {
        if built {
            continue;
        }
        let out = Snapback::new(url, PW).run(&["snapshots"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "built without the {scheme}: backend (cargo feature `{feature}`)"
            )),
            "{err}"
        );
    }
}

/// A service that cannot be reached is one line naming the repository and the server, for
/// every backend (the S3 form is tested in `tests/s3_auth.rs`).
#[test]
fn unreachable_services_are_one_line_errors() {
    // Nothing listens on port 1 of the loopback address.
    let mut cases = Vec::new();
    #[cfg(feature = "backend-azure")]
    cases.push((
        "azure:c:/r",
        vec![
            ("AZURE_ACCOUNT_NAME", "acct"),
            ("AZURE_ACCOUNT_KEY", "a2V5"),
            ("AZURE_ENDPOINT", "http://127.0.0.1:1/acct"),
        ],
        "cannot connect to azure:c:/r (http://127.0.0.1:1/acct): connection refused",
    ));
    #[cfg(feature = "backend-gcs")]
    cases.push((
        "gs:b:/r",
        vec![
            ("STORAGE_EMULATOR_HOST", "127.0.0.1:1"),
            ("GOOGLE_ACCESS_TOKEN", "t"),
        ],
        "cannot connect to gs:b:/r (http://127.0.0.1:1): connection refused",
    ));
    #[cfg(feature = "backend-rest")]
    cases.push((
        "rest:http://127.0.0.1:1/r",
        vec![],
        "cannot connect to rest:http://127.0.0.1:1/r: connection refused",
    ));
    for (url, env, want) in cases {
        let mut sb = Snapback::new(url, PW);
        for (k, v) in env {
            sb.set_env(k, v);
        }
        sb.set_env("SNAPBACK_RETRIES", "0");
        let out = sb.run(&["snapshots"]);
        assert_eq!(out.status.code(), Some(1), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end(), format!("snapback: {want}"), "{url}");
    }
}
