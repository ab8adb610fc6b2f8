//! Our chunker against the real `restic` (0.14): a repository restic initialised (with its own
//! random polynomial), files restic backed up, and our chunks' SHA-256 ids must equal the blob
//! ids restic recorded for each file, in order.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};
use snapback_chunker::{ChunkIter, Chunker, Pol, Tables, MAX_SIZE, MIN_SIZE};

const PASSWORD: &str = "chunker-compat";

/// Runs restic on `repo` with the password in the child's environment only; its stdout.
fn restic(repo: &Path, cwd: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("restic")
        .args(["--no-cache", "--quiet", "--repo"])
        .arg(repo)
        .args(args)
        .current_dir(cwd)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env_remove("RESTIC_PASSWORD_FILE")
        .env_remove("RESTIC_PASSWORD_COMMAND")
        .output()
        .expect("running restic");
    assert!(
        out.status.success(),
        "restic {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json(repo: &Path, cwd: &Path, args: &[&str]) -> Value {
    let out = restic(repo, cwd, args);
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("restic {args:?}: {e}: {}", String::from_utf8_lossy(&out)))
}

/// A node's `content` (restic writes `null` for an empty file).
fn content_ids(node: &Value) -> Vec<String> {
    match &node["content"] {
        Value::Null => Vec::new(),
        Value::Array(ids) => ids
            .iter()
            .map(|v| v.as_str().expect("blob id is a string").to_string())
            .collect(),
        other => panic!("unexpected content {other}"),
    }
}

/// Seeded xorshift64* bytes: the same 40 MiB on every run and machine.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The blob ids our chunker gives `data`, through the push API and through `ChunkIter`.
fn our_ids(tables: &Arc<Tables>, data: &[u8]) -> Vec<String> {
    let mut chunker = Chunker::new(tables.clone());
    let mut ids = Vec::new();
    let mut rest = data;
    while let Some(n) = chunker.next_cut(rest) {
        ids.push(hex::encode(Sha256::digest(&rest[..n])));
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        ids.push(hex::encode(Sha256::digest(rest)));
    }
    let streamed: Vec<String> = ChunkIter::with_read_size(data, tables.clone(), 300_007)
        .map(|c| hex::encode(Sha256::digest(c.expect("reading from memory"))))
        .collect();
    assert_eq!(streamed, ids, "ChunkIter and next_cut disagree");
    ids
}

#[test]
fn blob_ids_equal_restics_for_the_same_files() {
    if Command::new("restic").arg("version").output().is_err() {
        println!("SKIPPED blob_ids_equal_restics_for_the_same_files: `restic` is not on PATH");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let data_dir = tmp.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();

    // 40 MiB: random data (content-defined cuts), a run of zeros (cuts at exactly MIN_SIZE)
    // and a short-period pattern (almost surely no fingerprint hit: cuts at MAX_SIZE).
    let mut big = pseudo_random(40 << 20, 0x5EED_C0FF_EE00_0001);
    big[12 << 20..15 << 20].fill(0);
    for (i, b) in big[20 << 20..30 << 20].iter_mut().enumerate() {
        *b = b"snapback"[i % 7];
    }
    let small = pseudo_random(100 * 1024, 2);
    assert!(small.len() < MIN_SIZE);
    let files: BTreeMap<&str, &[u8]> =
        [("big", &big[..]), ("small", &small[..]), ("empty", &[][..])]
            .into_iter()
            .collect();
    for (name, data) in &files {
        std::fs::write(data_dir.join(name), data).unwrap();
    }

    restic(&repo, tmp.path(), &["init"]);
    let config = json(&repo, tmp.path(), &["cat", "config", "--json"]);
    let pol: Pol = config["chunker_polynomial"]
        .as_str()
        .expect("config has chunker_polynomial")
        .parse()
        .expect("restic's polynomial parses");
    assert_eq!(pol.deg(), 53, "{pol}");
    assert!(pol.irreducible(), "{pol}");
    assert_eq!(
        pol.to_string(),
        config["chunker_polynomial"].as_str().unwrap()
    );
    // Relative path: the snapshot's root tree then holds just `data`.
    restic(
        &repo,
        tmp.path(),
        &["backup", "--compression", "off", "data"],
    );

    // `ls --json` lists the file nodes; restic 0.14 leaves out their content, so the blob
    // lists come from the trees: snapshot -> root tree -> `data` -> file nodes.
    let ls = restic(&repo, tmp.path(), &["ls", "--json", "latest"]);
    let mut snapshot_id = None;
    let mut sizes = BTreeMap::new();
    for line in String::from_utf8(ls).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["struct_type"].as_str() {
            Some("snapshot") => snapshot_id = v["id"].as_str().map(str::to_string),
            Some("node") if v["type"] == "file" => {
                sizes.insert(v["name"].as_str().unwrap().to_string(), v["size"].clone());
            }
            _ => {}
        }
    }
    let snapshot_id = snapshot_id.expect("ls names the snapshot");
    for (name, data) in &files {
        assert_eq!(sizes[*name], data.len(), "{name}: size in restic's ls");
    }
    let snapshot = json(&repo, tmp.path(), &["cat", "snapshot", &snapshot_id]);
    let tree_nodes = |id: &str| -> Vec<Value> {
        json(&repo, tmp.path(), &["cat", "blob", id])["nodes"]
            .as_array()
            .expect("tree has nodes")
            .clone()
    };
    let root = tree_nodes(snapshot["tree"].as_str().unwrap());
    let data_node = root.iter().find(|n| n["name"] == "data").expect("data dir");
    let nodes = tree_nodes(data_node["subtree"].as_str().unwrap());

    let tables = Arc::new(Tables::new(pol));
    for (name, data) in &files {
        let node = nodes
            .iter()
            .find(|n| n["name"] == *name)
            .unwrap_or_else(|| panic!("{name} not in restic's tree"));
        let theirs = content_ids(node);
        let ours = our_ids(&tables, data);
        assert_eq!(ours, theirs, "{name}: blob ids differ from restic's");
        println!("{name}: {} chunks, identical to restic's", ours.len());
    }
    let big_ids = content_ids(nodes.iter().find(|n| n["name"] == "big").unwrap());
    assert!(big_ids.len() >= 12, "{big_ids:?}"); // 3 MiB of zeros alone give 6
    assert_eq!(
        content_ids(nodes.iter().find(|n| n["name"] == "small").unwrap()).len(),
        1
    );
    assert!(content_ids(nodes.iter().find(|n| n["name"] == "empty").unwrap()).is_empty());
    // The pattern region's cuts came from the size limit (a fingerprint hit there is possible
    // but has odds of about 7 in a million per polynomial: reported, not asserted).
    let mut lens = Vec::new();
    let mut c = Chunker::new(tables.clone());
    let mut rest = &big[..];
    while let Some(n) = c.next_cut(rest) {
        lens.push(n);
        rest = &rest[n..];
    }
    println!(
        "big: {} chunks at MAX_SIZE, {} at MIN_SIZE (polynomial {pol})",
        lens.iter().filter(|&&l| l == MAX_SIZE).count(),
        lens.iter().filter(|&&l| l == MIN_SIZE).count()
    );
}
