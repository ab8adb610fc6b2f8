//! forget, prune and check on a real S3 server (moto on 127.0.0.1), with the real `restic` as
//! the judge: snapback keeps exactly what restic's policy keeps, a pruned repository passes
//! `restic check --read-data` and restores equal, and both checkers agree on damage.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{diff_trees, make_tree, pseudo_random_bytes, Restic, S3Server, Snapback};
use serde_json::Value;

const PW: &str = "maintenance-password";

fn setup(prefix: &str) -> (S3Server, Snapback, Restic) {
    let s3 = S3Server::start();
    let sb = Snapback::s3(&s3, prefix, PW);
    let restic = Restic::s3(&s3, prefix, PW);
    sb.run_ok(&["init"]);
    (s3, sb, restic)
}

fn snapshot_ids(restic: &Restic) -> BTreeSet<String> {
    let snaps: Vec<Value> = restic.json(&["snapshots"]);
    snaps
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The ids under `field` ("keep" or "remove") of every group of a `forget --json` output.
fn forget_ids(groups: &[Value], field: &str) -> BTreeSet<String> {
    groups
        .iter()
        .flat_map(|g| g[field].as_array().cloned().unwrap_or_default())
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn restic_backup_at(restic: &Restic, src: &Path, time: &str, extra: &[&str]) {
    let mut args = vec![
        "backup",
        "-q",
        "--host",
        "maint-host",
        "--time",
        time,
        src.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    restic.run_ok(&args);
}

fn pack_keys(s3: &S3Server, prefix: &str) -> Vec<String> {
    s3.object_keys(&format!("{prefix}/data/"))
}

#[test]
fn forget_keeps_what_restic_keeps_and_pruned_repo_passes_restic_check() {
    require_restic!();
    let (s3, sb, restic) = setup("forget");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    // Each generation brings its own data, which becomes unused once its snapshot goes.
    let times = [
        "2024-01-01 10:00:00",
        "2024-01-01 15:00:00",
        "2024-01-02 09:00:00",
        "2024-01-02 21:00:00",
        "2024-01-03 08:00:00",
        "2024-01-03 20:00:00",
    ];
    for (i, t) in times.iter().enumerate() {
        std::fs::write(
            src.join("generation.bin"),
            pseudo_random_bytes(1000 + i as u64, 400_000),
        )
        .unwrap();
        restic_backup_at(&restic, &src, t, &[]);
    }
    // One snapshot written by snapback itself, in the same group (host and path).
    std::fs::write(src.join("generation.bin"), pseudo_random_bytes(7, 400_000)).unwrap();
    sb.run_ok(&["backup", "--host", "maint-host", src.to_str().unwrap()]);
    let all = snapshot_ids(&restic);
    assert_eq!(all.len(), 7);

    let policy = ["--keep-daily", "2", "--keep-last", "1"];
    // `--json` after the subcommand: snapback's is the subcommand's flag, not a global one.
    let mut dry = vec!["forget", "--dry-run"];
    dry.extend_from_slice(&policy);
    let mut dry_json = dry.clone();
    dry_json.push("--json");
    let judge: Vec<Value> = restic.json(&dry_json);
    let (restic_keep, restic_remove) = (forget_ids(&judge, "keep"), forget_ids(&judge, "remove"));
    assert_eq!(restic_keep.len() + restic_remove.len(), 7);
    assert!(!restic_remove.is_empty());

    // A dry run removes nothing, and decides as restic does.
    let ours: Vec<Value> = sb.json(&dry_json);
    assert_eq!(forget_ids(&ours, "keep"), restic_keep);
    assert_eq!(forget_ids(&ours, "remove"), restic_remove);
    let text = sb.run_ok(&dry);
    assert!(text.contains("would remove"), "{text}");
    assert_eq!(snapshot_ids(&restic), all);

    let mut real = vec!["forget"];
    real.extend_from_slice(&policy);
    let out = sb.run_ok(&real);
    assert!(out.contains("removed"), "{out}");
    assert_eq!(snapshot_ids(&restic), restic_keep);

    let packs_before = pack_keys(&s3, "forget").len();
    let out = sb.run_ok(&["prune"]);
    assert!(out.contains("done"), "{out}");
    let packs_after = pack_keys(&s3, "forget").len();
    assert!(
        packs_after < packs_before,
        "prune deleted nothing ({packs_before} packs):\n{out}"
    );
    restic.run_ok(&["check", "--read-data"]);
    let out = sb.run_ok(&["check", "--read-data"]);
    assert!(out.contains("no errors were found"), "{out}");
    // Nothing left to prune by restic's own accounting.
    let out = restic.run_ok(&["prune", "--dry-run"]);
    assert!(
        out.contains("this removes:          0 blobs")
            || out.contains("this removes:          0 B"),
        "restic would still prune:\n{out}"
    );

    let target = tmp.path().join("restore");
    restic.run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let restored = target.join(src.strip_prefix("/").unwrap());
    let diffs = diff_trees(&src, &restored);
    assert!(diffs.is_empty(), "restored tree differs: {diffs:#?}");
}

#[test]
fn prune_repacks_partly_used_packs_and_restic_agrees() {
    require_restic!();
    let (s3, sb, restic) = setup("repack");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Two files in one snapback backup share packs; the second backup drops one of them, so
    // after forgetting the first snapshot its packs are partly used.
    std::fs::write(src.join("stays.bin"), pseudo_random_bytes(1, 300_000)).unwrap();
    std::fs::write(src.join("goes.bin"), pseudo_random_bytes(2, 300_000)).unwrap();
    sb.run_ok(&["backup", "--host", "h", src.to_str().unwrap()]);
    std::fs::remove_file(src.join("goes.bin")).unwrap();
    sb.run_ok(&["backup", "--host", "h", src.to_str().unwrap()]);
    sb.run_ok(&["forget", "--keep-last", "1"]);

    let dry = sb.run_ok(&["prune", "--dry-run", "--max-unused", "0"]);
    assert!(dry.contains("dry run"), "{dry}");
    let before = pack_keys(&s3, "repack");
    let out = sb.run_ok(&["prune", "--max-unused", "0"]);
    assert!(
        out.contains("wrote 1 packs") || out.contains("wrote 2 packs"),
        "{out}"
    );
    let after = pack_keys(&s3, "repack");
    assert!(after.iter().any(|k| !before.contains(k)), "no new pack");
    restic.run_ok(&["check", "--read-data"]);
    let stats = restic.run_ok(&["prune", "--dry-run"]);
    assert!(stats.contains("unused size after prune: 0 B"), "{stats}");
    let target = tmp.path().join("restore");
    restic.run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&src, &target.join(src.strip_prefix("/").unwrap()));
    assert!(diffs.is_empty(), "{diffs:#?}");
}

/// Writes copies of snapshot `template` with other times, hosts and tags (cheap: no data).
fn write_synthetic_snapshots(s3: &S3Server, prefix: &str, specs: &[(String, &str, Vec<&str>)]) {
    use snapback_repo::backend::{Location, RetryPolicy, S3Credentials};
    use snapback_repo::file::SnapshotFile;
    use snapback_repo::{Backend, FileType, Repository};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let creds = S3Credentials {
            access_key_id: Some(common::TEST_ACCESS_KEY.into()),
            secret_access_key: Some(common::TEST_SECRET_KEY.into()),
            region: Some("us-east-1".into()),
            ..Default::default()
        };
        let backend = Backend::new(
            Location::parse(&s3.repo_url(prefix)).unwrap(),
            &creds,
            RetryPolicy::default(),
        )
        .unwrap();
        let repo = Repository::open(backend, PW.as_bytes()).await.unwrap();
        let (_, template) = repo.snapshots().await.unwrap().pop().unwrap();
        for (time, host, tags) in specs {
            let s = SnapshotFile {
                time: chrono::DateTime::parse_from_rfc3339(time).unwrap(),
                hostname: host.to_string(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                parent: None,
                ..template.clone()
            };
            repo.save_json(FileType::Snapshot, &s).await.unwrap();
        }
    });
}

#[test]
fn many_policies_decide_like_restic_on_a_synthetic_history() {
    require_restic!();
    let (s3, sb, restic) = setup("policies");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    restic_backup_at(&restic, &src, "2022-06-15 12:00:00", &[]);

    // Two years of irregular history on two hosts: hourly bursts, gaps, a year boundary in the
    // middle of an ISO week, times stored with non-UTC offsets near midnight, tags.
    let mut specs: Vec<(String, &str, Vec<&str>)> = Vec::new();
    let mut t = chrono::DateTime::parse_from_rfc3339("2022-11-20T23:10:00+02:00").unwrap();
    for i in 0..70u32 {
        let host = if i % 3 == 0 {
            "other-host"
        } else {
            "maint-host"
        };
        let tags = match i % 7 {
            0 => vec!["keep"],
            3 => vec!["keep", "monthly"],
            5 => vec!["db"],
            _ => vec![],
        };
        specs.push((t.to_rfc3339(), host, tags));
        let step_hours = [1, 2, 5, 11, 23, 26, 49, 170, 400][(i as usize * 7 + 3) % 9];
        t += chrono::Duration::hours(step_hours) + chrono::Duration::minutes(i64::from(i % 50));
        if i == 40 {
            t = t.with_timezone(&chrono::FixedOffset::west_opt(5 * 3600).unwrap());
        }
    }
    write_synthetic_snapshots(&s3, "policies", &specs);
    assert_eq!(snapshot_ids(&restic).len(), 71);

    let policies: &[&[&str]] = &[
        &["--keep-last", "3"],
        &["--keep-hourly", "6"],
        &["--keep-daily", "5", "--keep-last", "2"],
        &["--keep-weekly", "6"],
        &[
            "--keep-daily",
            "3",
            "--keep-weekly",
            "3",
            "--keep-monthly",
            "4",
        ],
        &["--keep-monthly", "8", "--keep-yearly", "3"],
        &["--keep-yearly", "10"],
        &["--keep-within", "1m10d"],
        &["--keep-within", "2d5h", "--keep-weekly", "2"],
        &["--keep-tag", "keep", "--keep-last", "1"],
        &["--keep-tag", "keep,monthly", "--keep-daily", "2"],
        &["--keep-weekly", "4", "--group-by", "host"],
        &["--keep-monthly", "2", "--group-by", ""],
        &["--keep-daily", "4", "--host", "other-host"],
        &["--keep-last", "2", "--tag", "db"],
        &["--keep-weekly", "3", "--group-by", "host,tags"],
    ];
    for policy in policies {
        let mut args = vec!["forget", "--dry-run", "--json"];
        args.extend_from_slice(policy);
        let theirs: Vec<Value> = restic.json(&args);
        let ours: Vec<Value> = sb.json(&args);
        // Every policy must be a real test: restic keeps some and removes some.
        assert!(
            !forget_ids(&theirs, "keep").is_empty() && !forget_ids(&theirs, "remove").is_empty(),
            "{policy:?} is trivial"
        );
        for field in ["keep", "remove"] {
            assert_eq!(
                forget_ids(&ours, field),
                forget_ids(&theirs, field),
                "{field} differs for {policy:?}"
            );
        }
        assert_eq!(ours.len(), theirs.len(), "number of groups for {policy:?}");
    }
    assert_eq!(snapshot_ids(&restic).len(), 71);
}

#[test]
fn corrupted_pack_is_named_by_check_and_restic_agrees() {
    require_restic!();
    let (s3, sb, restic) = setup("corrupt");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    sb.run_ok(&["backup", src.to_str().unwrap()]);

    // Clean: both pass.
    restic.run_ok(&["check", "--read-data"]);
    let out = sb.run_ok(&["check", "--read-data"]);
    assert!(out.contains("no errors were found"), "{out}");

    // Flip one byte in the middle of the largest pack.
    let (key, mut body) = pack_keys(&s3, "corrupt")
        .into_iter()
        .map(|k| {
            let body = s3.get_object(&k).unwrap();
            (k, body)
        })
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    let pack_id = key.rsplit('/').next().unwrap().to_string();
    let mid = body.len() / 2;
    body[mid] ^= 0x01;
    let resp = common::http_request(
        s3.port(),
        "PUT",
        &format!("/{}/{}", s3.bucket(), key),
        &body,
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));

    let ours = sb.run(&["check", "--read-data"]);
    let stderr = String::from_utf8_lossy(&ours.stderr);
    assert_eq!(
        ours.status.code(),
        Some(1),
        "snapback check passed:\n{stderr}"
    );
    assert!(
        stderr.contains(&pack_id),
        "error does not name {pack_id}:\n{stderr}"
    );
    eprintln!("snapback check --read-data on the corrupted pack:\n{stderr}");
    let theirs = restic.run(&["check", "--read-data"]);
    assert!(
        !theirs.status.success(),
        "restic check --read-data passed a corrupted pack:\n{}",
        String::from_utf8_lossy(&theirs.stdout)
    );
    let restic_text = format!(
        "{}{}",
        String::from_utf8_lossy(&theirs.stdout),
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert!(restic_text.contains(&pack_id[..8]), "{restic_text}");

    // Prune refuses to carry damaged data forward when it would have to repack it; with
    // nothing to repack it leaves the pack alone. Either way restic still sees the damage.
    let _ = sb.run(&["prune", "--max-unused", "0"]);
    assert!(!restic.run(&["check", "--read-data"]).status.success());
}

fn object_path(s3: &S3Server, key: &str) -> String {
    format!("/{}/{}", s3.bucket(), key)
}

#[test]
fn missing_pack_is_an_error_for_both_checkers_and_prune_refuses() {
    require_restic!();
    let (s3, sb, restic) = setup("missing");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    sb.run_ok(&["backup", src.to_str().unwrap()]);
    let key = pack_keys(&s3, "missing").into_iter().next().unwrap();
    let pack_id = key.rsplit('/').next().unwrap().to_string();
    let resp = common::http_request(s3.port(), "DELETE", &object_path(&s3, &key), b"").unwrap();
    assert!(resp.status == 204 || resp.status == 200, "{}", resp.status);

    let ours = sb.run(&["check"]);
    let stderr = String::from_utf8_lossy(&ours.stderr);
    assert_eq!(ours.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&pack_id) && stderr.contains("missing"),
        "{stderr}"
    );
    assert!(!restic.run(&["check"]).status.success());

    let before = pack_keys(&s3, "missing");
    let out = sb.run(&["prune", "--max-unused", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to prune") && stderr.contains(&pack_id),
        "{stderr}"
    );
    assert_eq!(pack_keys(&s3, "missing"), before, "prune deleted packs");
}

#[test]
fn orphaned_pack_is_no_error_and_prune_deletes_it() {
    require_restic!();
    use sha2::Digest;
    let (s3, sb, restic) = setup("orphan");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"content").unwrap();
    sb.run_ok(&["backup", src.to_str().unwrap()]);
    // A pack-named file no index lists (as an interrupted backup leaves behind).
    let body = pseudo_random_bytes(99, 5000);
    let id = hex::encode(sha2::Sha256::digest(&body));
    let key = format!("orphan/data/{}/{id}", &id[..2]);
    let resp = common::http_request(s3.port(), "PUT", &object_path(&s3, &key), &body).unwrap();
    assert_eq!(resp.status, 200);

    let out = sb.run_ok(&["check"]);
    assert!(out.contains("orphaned") && out.contains(&id), "{out}");
    assert!(out.contains("no errors were found"), "{out}");
    restic.run_ok(&["check"]);

    let out = sb.run_ok(&["prune"]);
    assert!(out.contains("1 not in any index"), "{out}");
    assert!(!pack_keys(&s3, "orphan").contains(&key));
    restic.run_ok(&["check", "--read-data"]);
    let out = sb.run_ok(&["check", "--read-data"]);
    assert!(!out.contains("orphaned"), "{out}");
}

#[test]
fn forget_with_prune_leaves_a_repo_restic_accepts() {
    require_restic!();
    let (_s3, sb, restic) = setup("forgetprune");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3u64 {
        std::fs::write(src.join("f"), pseudo_random_bytes(i, 200_000)).unwrap();
        sb.run_ok(&["backup", src.to_str().unwrap()]);
    }
    let out = sb.run_ok(&["forget", "--keep-last", "1", "--prune"]);
    assert!(
        out.contains("running prune") && out.contains("done"),
        "{out}"
    );
    assert_eq!(snapshot_ids(&restic).len(), 1);
    restic.run_ok(&["check", "--read-data"]);
    let stats = restic.run_ok(&["prune", "--dry-run"]);
    assert!(
        stats.contains("this removes:          0 blobs / 0 B"),
        "{stats}"
    );
}

/// Flips one byte in the middle of object `key`.
fn flip_byte(s3: &S3Server, key: &str) {
    let mut body = s3.get_object(key).unwrap();
    let mid = body.len() / 2;
    body[mid] ^= 0x01;
    let resp = common::http_request(s3.port(), "PUT", &object_path(s3, key), &body).unwrap();
    assert_eq!(resp.status, 200);
}

#[test]
fn corrupted_index_and_snapshot_files_are_named_and_restic_agrees() {
    require_restic!();
    let (s3, sb, restic) = setup("files");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    sb.run_ok(&["backup", src.to_str().unwrap()]);
    sb.run_ok(&["backup", src.to_str().unwrap()]);

    let snapshot = s3.object_keys("files/snapshots/").pop().unwrap();
    flip_byte(&s3, &snapshot);
    let out = sb.run(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(snapshot.trim_start_matches("files/")),
        "{stderr}"
    );
    assert!(!restic.run(&["check"]).status.success());

    let index = s3.object_keys("files/index/").pop().unwrap();
    flip_byte(&s3, &index);
    let out = sb.run(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(index.trim_start_matches("files/")),
        "{stderr}"
    );
    assert!(!restic.run(&["check"]).status.success());
    // Prune refuses to work from a damaged index.
    let out = sb.run(&["prune"]);
    assert!(!out.status.success());
}

/// How many packs a check read in full: snapback's summary ("...: N packs, B bytes") and
/// restic 0.14's verbose line ("read group #n of N data packs ...").
fn packs_read(sb_out: &str, restic_out: &str) -> (usize, usize) {
    let ours = sb_out
        .split(": ")
        .last()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pack count in {sb_out:?}"));
    let theirs = restic_out
        .lines()
        .find_map(|l| l.strip_prefix("read group #"))
        .and_then(|t| t.split(' ').nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pack count in {restic_out:?}"));
    (ours, theirs)
}

#[test]
fn read_data_subset_reads_restics_groups_and_finds_the_corrupted_pack_in_its_group() {
    require_restic!();
    let (s3, sb, restic) = setup("subset");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        let data = pseudo_random_bytes(100 + i, 3_000_000);
        std::fs::write(src.join(format!("f{i}")), data).unwrap();
    }
    sb.run_ok(&["backup", src.to_str().unwrap()]);
    let packs = pack_keys(&s3, "subset");
    assert!(packs.len() >= 4, "want several packs, got {packs:?}");
    const GROUPS: usize = 4;

    // Clean: every group passes, and each group holds as many packs for us as for restic.
    let mut total = 0;
    for n in 1..=GROUPS {
        let arg = format!("--read-data-subset={n}/{GROUPS}");
        let ours = sb.run_ok(&["check", &arg]);
        let theirs = restic.run_ok(&["check", &arg]);
        let (a, b) = packs_read(ours.lines().next().unwrap(), &theirs);
        assert_eq!(a, b, "group {n}/{GROUPS}: we read {a} packs, restic {b}");
        total += a;
    }
    assert_eq!(
        total,
        packs.len(),
        "the groups do not cover every pack once"
    );

    // Corrupt one data pack: exactly the group its id's first byte falls in fails, for both.
    let key = packs
        .iter()
        .max_by_key(|k| s3.get_object(k).unwrap().len())
        .unwrap();
    let pack_id = key.rsplit('/').next().unwrap().to_string();
    flip_byte(&s3, key);
    let first_byte = usize::from_str_radix(&pack_id[..2], 16).unwrap();
    let bad_group = first_byte % GROUPS + 1;
    for n in 1..=GROUPS {
        let arg = format!("--read-data-subset={n}/{GROUPS}");
        let ours = sb.run(&["check", &arg]);
        let theirs = restic.run(&["check", &arg]);
        let stderr = String::from_utf8_lossy(&ours.stderr);
        if n == bad_group {
            assert_eq!(ours.status.code(), Some(1), "group {n} passed:\n{stderr}");
            assert!(stderr.contains(&pack_id), "{pack_id} not named:\n{stderr}");
            assert!(!theirs.status.success(), "restic passed group {n}");
        } else {
            assert!(ours.status.success(), "group {n} failed:\n{stderr}");
            assert!(
                theirs.status.success(),
                "restic failed group {n}: {}",
                String::from_utf8_lossy(&theirs.stderr)
            );
        }
    }
    // A share or a size that covers everything reads the damaged pack too.
    for arg in ["--read-data-subset=100%", "--read-data-subset=1T"] {
        let ours = sb.run(&["check", arg]);
        assert_eq!(ours.status.code(), Some(1), "{arg} passed");
        assert!(String::from_utf8_lossy(&ours.stderr).contains(&pack_id));
        assert!(
            !restic.run(&["check", arg]).status.success(),
            "restic {arg}"
        );
    }

    // Bad arguments: one clear error and exit 1 (restic refuses them too), before any
    // storage is touched.
    for bad in ["0/3", "4/3", "1/257", "150%", "0%", "abc", "1.5/3", "0"] {
        let arg = format!("--read-data-subset={bad}");
        let ours = sb.run(&["check", &arg]);
        let stderr = String::from_utf8_lossy(&ours.stderr);
        assert_eq!(ours.status.code(), Some(1), "{bad}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{bad}: not one line:\n{stderr}");
        assert!(
            stderr.contains("--read-data-subset") && stderr.contains(bad),
            "{stderr}"
        );
        assert!(
            !restic.run(&["check", &arg]).status.success(),
            "restic took {bad}"
        );
    }
}
