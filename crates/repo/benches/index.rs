//! The in-memory blob index at scale: memory per blob and lookup time (issue 13).
//!
//! Generating a repository of a million blobs by backing files up would take too long, so
//! `gen` writes index files directly through the library: real index JSON, sealed (and
//! compressed) with the repository's key, exactly what `BlobIndex::load` reads. Loading runs in
//! a process of its own so that its peak RSS is the load's alone:
//!
//! ```text
//! cargo bench -p snapback-repo --bench index -- gen /tmp/idx 1000000 16
//! cargo bench -p snapback-repo --bench index -- load /tmp/idx
//! ```
//!
//! `gen DIR BLOBS [BLOBS_PER_PACK]` makes a repository in `DIR/repo` (password `bench`) and
//! keeps 100,000 of its blob ids in `DIR/probe` for the hit lookups. `load DIR` prints the RSS
//! before and after `BlobIndex::load`, the peak RSS, the load's wall time, and ns per `get`
//! and `contains`, hits and misses (random ids). `cargo bench` without arguments does nothing.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use snapback_repo::file::key::KdfParams;
use snapback_repo::file::{IndexBlob, IndexFile, IndexPack};
use snapback_repo::{Backend, BlobIndex, BlobType, FileType, Id, InitOptions, Repository};

const PASSWORD: &[u8] = b"bench";
/// Blobs per index file, as restic writes them.
const PER_FILE: usize = 50_000;
const PROBES: usize = 100_000;

fn main() {
    // As the snapback binary sets it (src/main.rs): large buffers get their own mappings,
    // returned to the OS when freed, so that RSS shows what is held, not what glibc kept.
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["gen", dir, blobs] => rt.block_on(gen(dir, parse(blobs), 16)),
        ["gen", dir, blobs, per_pack] => rt.block_on(gen(dir, parse(blobs), parse(per_pack))),
        ["load", dir] => rt.block_on(load(dir)),
        _ => eprintln!("usage: index gen DIR BLOBS [BLOBS_PER_PACK] | index load DIR"),
    }
}

fn parse(s: &str) -> usize {
    s.parse().expect("a number")
}

async fn gen(dir: &str, blobs: usize, per_pack: usize) {
    let root = std::path::Path::new(dir);
    std::fs::create_dir_all(root).expect("create DIR");
    let url = root.join("repo").to_str().expect("utf-8 path").to_string();
    let opts = InitOptions {
        kdf: KdfParams {
            n: 1 << 10,
            r: 8,
            p: 1,
        },
        ..InitOptions::default()
    };
    let backend = Backend::from_url(&url).expect("backend");
    let repo = Repository::init(backend, PASSWORD, opts)
        .await
        .expect("init");
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut probe = Vec::with_capacity(PROBES * 32);
    let every = (blobs / PROBES).max(1);
    let mut made = 0;
    while made < blobs {
        let mut file = IndexFile::default();
        let mut in_file = 0;
        while in_file < PER_FILE && made < blobs {
            let n = per_pack.min(blobs - made);
            let mut offset = 0u32;
            let tree = rng.gen_ratio(1, 10);
            let pack = IndexPack {
                id: Id(rng.gen()),
                blobs: (0..n)
                    .map(|i| {
                        let id = Id(rng.gen());
                        if (made + i) % every == 0 && probe.len() < PROBES * 32 {
                            probe.extend_from_slice(&id.0);
                        }
                        let length = rng.gen_range(100..1 << 20);
                        let b = IndexBlob {
                            id,
                            ty: if tree { BlobType::Tree } else { BlobType::Data },
                            offset,
                            length,
                            uncompressed_length: rng
                                .gen_ratio(4, 5)
                                .then(|| length + rng.gen_range(0..1000)),
                        };
                        offset += length;
                        b
                    })
                    .collect(),
            };
            made += n;
            in_file += n;
            file.packs.push(pack);
        }
        repo.save_json(FileType::Index, &file).await.expect("save");
    }
    std::fs::write(root.join("probe"), probe).expect("write probe");
    println!("generated {made} blobs, {per_pack} per pack, in {url}");
}

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc/self/status")
}

async fn load(dir: &str) {
    let root = std::path::Path::new(dir);
    let url = root.join("repo").to_str().expect("utf-8 path").to_string();
    let repo = Repository::open(Backend::from_url(&url).expect("backend"), PASSWORD)
        .await
        .expect("open");
    let before = status_kib("VmRSS:");
    let started = Instant::now();
    let index = BlobIndex::load(&repo).await.expect("load");
    let took = started.elapsed();
    let after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    let n = index.len();
    println!("blobs: {n}");
    println!("load: {:.3} s", took.as_secs_f64());
    println!(
        "RSS before {:.1} MiB, after {:.1} MiB, peak {:.1} MiB",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!(
        "heap held by the index (from capacities): {:.2} B/blob",
        index.heap_bytes() as f64 / n as f64
    );
    println!(
        "RSS held by the index: {:.1} B/blob; peak over start: {:.1} B/blob",
        (after.saturating_sub(before) * 1024) as f64 / n as f64,
        (peak.saturating_sub(before) * 1024) as f64 / n as f64
    );
    // What the allocator keeps of the freed JSON buffers is not the index's: give it back
    // (glibc; the sidecar does the same after each run).
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe { libc::malloc_trim(0) };
    let trimmed = status_kib("VmRSS:");
    println!(
        "after malloc_trim: RSS {:.1} MiB, {:.1} B/blob over start",
        trimmed as f64 / 1024.0,
        (trimmed.saturating_sub(before) * 1024) as f64 / n as f64
    );
    if std::env::var_os("INDEX_BENCH_SMAPS").is_some() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut last = String::new();
        for l in smaps.lines() {
            if l.contains('-') && !l.starts_with(|c: char| c.is_ascii_uppercase()) {
                last = l.to_string();
            } else if let Some(v) = l.strip_prefix("Rss:") {
                let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                if kib > 4096 {
                    println!("  {kib} KiB  {last}");
                }
            }
        }
    }

    let probe: Vec<Id> = std::fs::read(root.join("probe"))
        .expect("probe file")
        .chunks_exact(32)
        .map(|c| Id(c.try_into().expect("32 bytes")))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let misses: Vec<Id> = (0..probe.len()).map(|_| Id(rng.gen())).collect();
    // Shuffled order: a backup looks ids up in content order, which is random in id space.
    let rounds = 5;
    let time = |ids: &[Id], f: &dyn Fn(&Id) -> bool| {
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            let mut found = 0usize;
            for id in ids {
                found += usize::from(f(id));
            }
            let ns = t.elapsed().as_nanos() as f64 / ids.len() as f64;
            std::hint::black_box(found);
            best = best.min(ns);
        }
        best
    };
    let hit_get = time(&probe, &|id| index.get(id).is_some());
    let hit_contains = time(&probe, &|id| index.contains(id));
    let miss_get = time(&misses, &|id| index.get(id).is_some());
    let miss_contains = time(&misses, &|id| index.contains(id));
    assert!(
        probe.iter().all(|id| index.contains(id)),
        "every probe id is a hit"
    );
    assert!(
        misses.iter().all(|id| !index.contains(id)),
        "random ids miss"
    );
    println!(
        "ns per lookup (best of {rounds} over {} ids): get hit {hit_get:.1}, contains hit {hit_contains:.1}, get miss {miss_get:.1}, contains miss {miss_contains:.1}",
        probe.len()
    );
}
