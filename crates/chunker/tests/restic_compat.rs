//! Our chunker against the real `restic`: same polynomial, same file → same blob ids, in order.

use std::process::Command;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use snapback_chunker::{Chunker, Pol, Tables};

const PASSWORD: &str = "chunker-compat";

fn restic(repo: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("restic")
        .args(["--no-cache", "--quiet", "--repo"])
        .arg(repo)
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("restic must be installed (.ci/setup installs it)");
    assert!(
        out.status.success(),
        "restic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json(repo: &std::path::Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&restic(repo, args)).unwrap()
}

#[test]
fn blob_ids_equal_restics_for_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let data_dir = tmp.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    // 40 MiB of seeded pseudo-random bytes with a run of zeros in the middle.
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut content: Vec<u8> = (0..40 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    content[10 << 20..13 << 20].fill(0);
    std::fs::write(data_dir.join("big"), &content).unwrap();

    restic(&repo, &["init"]);
    let config = json(&repo, &["cat", "config"]);
    let pol: Pol = config["chunker_polynomial"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    restic(
        &repo,
        &["backup", "--compression", "off", data_dir.to_str().unwrap()],
    );

    // Walk from the snapshot's tree down to the file node.
    let snaps = json(&repo, &["snapshots", "--json"]);
    let mut tree = snaps[0]["tree"].as_str().unwrap().to_string();
    let comps: Vec<&str> = data_dir
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .split('/')
        .collect();
    let mut restic_ids = Vec::new();
    for (i, name) in comps.iter().chain(std::iter::once(&"big")).enumerate() {
        let t = json(&repo, &["cat", "blob", &tree]);
        let node = t["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == *name)
            .unwrap()
            .clone();
        if i == comps.len() {
            restic_ids = node["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
        } else {
            tree = node["subtree"].as_str().unwrap().to_string();
        }
    }

    let mut chunker = Chunker::new(Arc::new(Tables::new(pol)));
    let mut ours = Vec::new();
    let mut rest = &content[..];
    while let Some(n) = chunker.next_cut(rest) {
        ours.push(hex::encode(Sha256::digest(&rest[..n])));
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        ours.push(hex::encode(Sha256::digest(rest)));
    }
    assert!(restic_ids.len() > 10, "{restic_ids:?}");
    assert_eq!(ours, restic_ids);
}
