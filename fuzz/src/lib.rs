//! Fuzz targets for the parsers that read untrusted bytes, and a small stable-Rust driver.
//!
//! Each target takes arbitrary bytes and must never panic (nor hang: every loop is bounded by
//! the input). They run under libFuzzer (`fuzz_targets/`, cargo-fuzz) or under
//! [`run`], which mutates a built-in seed corpus with a seeded generator on any toolchain.

use std::io::Cursor;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use snapback_repo::file::{ConfigFile, IndexFile, KeyFile, SnapshotFile, Tree};
use snapback_repo::pack::{parse_header, PackBuilder};
use snapback_repo::{BlobType, Id, Key};
use snapback_stream::entry::EntrySource;
use snapback_stream::TarSource;

/// The key the pack targets use (fixed: a crash reproduces).
pub fn fuzz_key() -> Key {
    let mut bytes = [0u8; 64];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    Key::from_bytes(bytes)
}

/// The tar reader over arbitrary bytes: every entry and its content are read until the end
/// or the first error; a second call after an error must not panic either.
pub fn tar_reader(data: &[u8]) {
    let mut source = TarSource::new(Cursor::new(data));
    let mut sink = [0u8; 8192];
    // Each entry consumes at least one 512-byte block, so this bound is never the limit.
    for _ in 0..data.len() / 512 + 2 {
        match source.next_entry() {
            Ok(Some(entry)) => {
                let _ = (entry.path.as_os_str().len(), entry.kind, entry.meta.size);
                if let Some(reader) = entry.data {
                    loop {
                        match reader.read(&mut sink) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
            }
            Ok(None) => return,
            Err(_) => {
                let _ = source.next_entry().map(|e| e.is_some());
                return;
            }
        }
    }
}

/// The pack header parser over an arbitrary pack tail. The MAC check rejects almost all of
/// these early; [`pack_header_plain`] reaches the decrypted-header parsing.
pub fn pack_header(data: &[u8]) {
    let key = fuzz_key();
    let _ = parse_header(&key, data, data.len() as u64);
    // A tail that claims a larger (or smaller) pack than it is.
    if data.len() >= 8 {
        let claimed = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]));
        let _ = parse_header(&key, &data[8..], claimed);
    }
}

/// The decrypted-header parser: the input (after two bytes giving the length of the blob
/// area before it) is encrypted with the fixed key as a pack header, so it authenticates and
/// its entries are parsed. What parses must describe blobs inside the blob area, back to back.
pub fn pack_header_plain(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let blob_area = u64::from(u16::from_le_bytes([data[0], data[1]]));
    let key = fuzz_key();
    let mut tail = key.encrypt(&data[2..]);
    let Ok(len) = u32::try_from(tail.len()) else {
        return;
    };
    tail.extend_from_slice(&len.to_le_bytes());
    let pack_size = blob_area + tail.len() as u64;
    if let Ok(blobs) = parse_header(&key, &tail, pack_size) {
        let mut next = 0u64;
        for b in &blobs {
            assert_eq!(u64::from(b.offset), next, "blobs are back to back");
            next += u64::from(b.length);
        }
        assert!(
            next <= blob_area,
            "blobs {next} past the blob area {blob_area}"
        );
    }
    // The same header claiming a pack too small to hold it.
    let _ = parse_header(&key, &tail, tail.len() as u64 - 1);
}

/// What we write we must read back, equal where the type can tell.
fn json_round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    let written = serde_json::to_vec(&value).expect("a parsed file serialises");
    Some(
        serde_json::from_slice(&written)
            .unwrap_or_else(|e| panic!("cannot read back what was written ({e}): {written:?}")),
    )
}

/// The JSON decoders of the repository's files; a value that parses must survive a write
/// and a read.
pub fn json_files(data: &[u8]) {
    if let Some(tree) = json_round_trip::<Tree>(data) {
        let again: Tree = serde_json::from_slice(&serde_json::to_vec(&tree).unwrap()).unwrap();
        assert_eq!(tree, again, "a tree changes on a write and a read");
    }
    if let Some(config) = json_round_trip::<ConfigFile>(data) {
        let again: ConfigFile =
            serde_json::from_slice(&serde_json::to_vec(&config).unwrap()).unwrap();
        assert_eq!(config, again);
    }
    let _ = json_round_trip::<SnapshotFile>(data);
    let _ = json_round_trip::<IndexFile>(data);
    let _ = json_round_trip::<KeyFile>(data);
}

/// The targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// [`tar_reader`]
    TarReader,
    /// [`pack_header`]
    PackHeader,
    /// [`pack_header_plain`]
    PackHeaderPlain,
    /// [`json_files`]
    JsonFiles,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 4] = [
        Target::TarReader,
        Target::PackHeader,
        Target::PackHeaderPlain,
        Target::JsonFiles,
    ];

    /// Its name (as in `fuzz_targets/`).
    pub fn name(self) -> &'static str {
        match self {
            Target::TarReader => "tar_reader",
            Target::PackHeader => "pack_header",
            Target::PackHeaderPlain => "pack_header_plain",
            Target::JsonFiles => "json_files",
        }
    }

    /// By name.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Runs the target on one input.
    pub fn call(self, data: &[u8]) {
        match self {
            Target::TarReader => tar_reader(data),
            Target::PackHeader => pack_header(data),
            Target::PackHeaderPlain => pack_header_plain(data),
            Target::JsonFiles => json_files(data),
        }
    }

    /// Valid (or nearly valid) inputs the mutations start from.
    pub fn seeds(self) -> Vec<Vec<u8>> {
        match self {
            Target::TarReader => tar_seeds(),
            Target::PackHeader => vec![sample_pack(), sample_pack()[..40].to_vec(), vec![0; 8]],
            Target::PackHeaderPlain => {
                let mut seeds = Vec::new();
                for header in [sample_header(), Vec::new(), sample_header()[..20].to_vec()] {
                    let mut s = 200u16.to_le_bytes().to_vec();
                    s.extend_from_slice(&header);
                    seeds.push(s);
                }
                seeds
            }
            Target::JsonFiles => JSON_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect(),
        }
    }
}

fn sample_pack() -> Vec<u8> {
    let key = fuzz_key();
    let mut p = PackBuilder::new();
    p.add(Id::hash(b"a"), BlobType::Data, &key.encrypt(b"a"), None)
        .unwrap();
    p.add(Id::hash(b"t"), BlobType::Tree, &key.encrypt(b"zz"), Some(9))
        .unwrap();
    p.finish(&key).unwrap().bytes
}

/// A header with a plain data blob and a compressed tree blob (type, lengths, id).
fn sample_header() -> Vec<u8> {
    let mut h = vec![0u8];
    h.extend_from_slice(&100u32.to_le_bytes());
    h.extend_from_slice(&[0xaa; 32]);
    h.push(3);
    h.extend_from_slice(&60u32.to_le_bytes());
    h.extend_from_slice(&500u32.to_le_bytes());
    h.extend_from_slice(&[0xbb; 32]);
    h
}

fn tar_header(kind: tar::EntryType, size: u64, mode: u32, gnu: bool) -> tar::Header {
    let mut h = if gnu {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_600_000_000);
    h
}

fn tar_seeds() -> Vec<Vec<u8>> {
    use tar::EntryType;
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar_header(EntryType::Directory, 0, 0o755, true);
    b.append_data(&mut dir, "dir/", &b""[..]).unwrap();
    let mut file = tar_header(EntryType::Regular, 11, 0o644, true);
    b.append_data(&mut file, "dir/hello.txt", &b"hello world"[..])
        .unwrap();
    let mut link = tar_header(EntryType::Symlink, 0, 0o777, true);
    b.append_link(&mut link, "dir/link", "hello.txt").unwrap();
    // A name too long for the header: a GNU long-name member.
    let long = format!("{}/file", "d".repeat(150));
    let mut long_header = tar_header(EntryType::Regular, 3, 0o600, true);
    b.append_data(&mut long_header, &long, &b"abc"[..]).unwrap();
    // A PAX header with a path, an xattr and a fractional mtime.
    b.append_pax_extensions([
        ("path", &b"pax/named.txt"[..]),
        ("SCHILY.xattr.user.k", &b"v"[..]),
        ("mtime", &b"1600000000.5"[..]),
    ])
    .unwrap();
    let mut pax_file = tar_header(EntryType::Regular, 2, 0o644, false);
    b.append_data(&mut pax_file, "short", &b"hi"[..]).unwrap();
    let full = b.into_inner().unwrap();
    vec![
        full.clone(),
        full[..1536].to_vec(),
        vec![0; 1024],
        Vec::new(),
    ]
}

const JSON_SEEDS: &[&str] = &[
    r#"{"nodes":[{"name":"a.txt","type":"file","mode":420,"mtime":"2020-09-13T12:26:40.123456789+02:00","atime":"2020-09-13T12:26:40Z","ctime":"2020-09-13T12:26:40Z","uid":1000,"gid":1000,"user":"u","group":"g","inode":5,"device_id":2049,"size":5,"links":1,"content":["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]},{"name":"d","type":"dir","mode":2147484141,"mtime":"2020-09-13T12:26:40Z","atime":"2020-09-13T12:26:40Z","ctime":"2020-09-13T12:26:40Z","uid":0,"gid":0,"subtree":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"},{"name":"l","type":"symlink","linktarget":"a.txt","mode":134218239,"mtime":"2020-09-13T12:26:40Z","atime":"2020-09-13T12:26:40Z","ctime":"2020-09-13T12:26:40Z","uid":0,"gid":0},{"name":"x","type":"file","mode":420,"mtime":"2020-09-13T12:26:40Z","atime":"2020-09-13T12:26:40Z","ctime":"2020-09-13T12:26:40Z","uid":0,"gid":0,"content":[],"extended_attributes":[{"name":"user.k","value":"dmFsdWU="}]}]}"#,
    r#"{"version":2,"id":"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","chunker_polynomial":"3da3358b4dc173"}"#,
    r#"{"time":"2024-01-01T00:00:00.5+01:00","parent":"dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd","tree":"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee","paths":["/data"],"hostname":"h","username":"u","uid":0,"gid":0,"excludes":["*.tmp"],"tags":["t"],"program_version":"restic 0.14.0"}"#,
    r#"{"supersedes":["ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"],"packs":[{"id":"0101010101010101010101010101010101010101010101010101010101010101","blobs":[{"id":"0202020202020202020202020202020202020202020202020202020202020202","type":"data","offset":0,"length":38},{"id":"0303030303030303030303030303030303030303030303030303030303030303","type":"tree","offset":38,"length":100,"uncompressed_length":300}]}]}"#,
    r#"{"created":"2024-01-01T00:00:00Z","username":"u","hostname":"h","kdf":"scrypt","N":32768,"r":8,"p":1,"salt":"c2FsdHNhbHRzYWx0","data":"ZGF0YWRhdGE="}"#,
];

/// xorshift64*: the driver's only source of randomness, so a run reproduces from its seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Bytes that parsers treat specially, favoured by the mutations.
const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x80",
    b"ustar\x0000",
    b"ustar  \0",
    b"0000777\0",
    b"77777777777",
    b"\x80\0\0\0\0\0\0\0\0\0\0\x01",
    b"\"",
    b"null",
    b"[]",
    b"{}",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\\u0000",
    b"\\ud800",
    b"=",
];

/// One random change to `data`, possibly using `other` (another seed) for a splice.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    match rng.below(9) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = rng.next_u64() as u8;
        }
        2 => {
            let at = rng.below(data.len() + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
        3 if !data.is_empty() => {
            let at = rng.below(data.len());
            let end = (at + 1 + rng.below(64)).min(data.len());
            data.drain(at..end);
        }
        4 => {
            let keep = rng.below(data.len() + 1);
            data.truncate(keep);
        }
        5 if !data.is_empty() => {
            let at = rng.below(data.len());
            let end = (at + 1 + rng.below(512)).min(data.len());
            let copy = data[at..end].to_vec();
            let to = rng.below(data.len() + 1);
            data.splice(to..to, copy);
        }
        6 if !other.is_empty() => {
            let at = rng.below(data.len() + 1);
            let from = rng.below(other.len());
            let end = (from + 1 + rng.below(256)).min(other.len());
            data.truncate(at);
            data.extend_from_slice(&other[from..end]);
        }
        7 => {
            let token = INTERESTING[rng.below(INTERESTING.len())];
            let at = rng.below(data.len() + 1);
            if rng.below(2) == 0 || at + token.len() > data.len() {
                data.splice(at..at, token.iter().copied());
            } else {
                data[at..at + token.len()].copy_from_slice(token);
            }
        }
        _ => {
            // An ASCII digit or octal-field change: tar headers and JSON numbers are text.
            if !data.is_empty() {
                let i = rng.below(data.len());
                data[i] = b"0123456789 \0"[rng.below(12)];
            }
        }
    }
}

/// What a driver run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    /// Inputs tried (seeds included).
    pub execs: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs `target` on its seeds, then on mutated seeds and random bytes for `time`. A panic
/// propagates after the input is written to `artifacts/stable-<target>-<hash>` (if possible).
pub fn run(target: Target, time: Duration, seed: u64) -> RunStats {
    let start = Instant::now();
    let seeds = target.seeds();
    let mut rng = Rng::new(seed ^ target.name().len() as u64);
    let mut execs = 0u64;
    let try_one = |input: &[u8]| {
        let result = std::panic::catch_unwind(|| target.call(input));
        if let Err(panic) = result {
            let name = format!(
                "artifacts/stable-{}-{}",
                target.name(),
                &Id::hash(input).to_hex()[..16]
            );
            let _ = std::fs::create_dir_all("artifacts");
            let _ = std::fs::write(&name, input);
            eprintln!(
                "{}: panic on a {}-byte input, saved as {name}",
                target.name(),
                input.len()
            );
            std::panic::resume_unwind(panic);
        }
    };
    for s in &seeds {
        try_one(s);
        execs += 1;
    }
    while start.elapsed() < time {
        let mut input = if seeds.is_empty() || rng.below(16) == 0 {
            let n = rng.below(2048);
            (0..n).map(|_| rng.next_u64() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        let other = if seeds.is_empty() {
            &[][..]
        } else {
            &seeds[rng.below(seeds.len())][..]
        };
        for _ in 0..1 + rng.below(8) {
            mutate(&mut rng, &mut input, other);
        }
        try_one(&input);
        execs += 1;
    }
    RunStats {
        execs,
        elapsed: start.elapsed(),
    }
}

/// Seconds per target for the tests (`SNAPBACK_FUZZ_SECS`, default 2).
pub fn test_seconds() -> Duration {
    let secs = std::env::var("SNAPBACK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds are what they claim: valid inputs that reach deep into each parser.
    #[test]
    fn seeds_are_valid_inputs() {
        let mut source = TarSource::new(Cursor::new(tar_seeds()[0].clone()));
        let mut paths = Vec::new();
        while let Some(e) = source.next_entry().unwrap() {
            paths.push(e.path.to_string_lossy().into_owned());
        }
        assert!(paths.len() >= 5, "{paths:?}");
        assert!(
            paths.iter().any(|p| p.ends_with("pax/named.txt")),
            "{paths:?}"
        );

        let key = fuzz_key();
        let pack = sample_pack();
        assert_eq!(
            parse_header(&key, &pack, pack.len() as u64).unwrap().len(),
            2
        );

        assert_eq!(
            serde_json::from_str::<Tree>(JSON_SEEDS[0])
                .unwrap()
                .nodes
                .len(),
            4
        );
        serde_json::from_str::<ConfigFile>(JSON_SEEDS[1]).unwrap();
        serde_json::from_str::<SnapshotFile>(JSON_SEEDS[2]).unwrap();
        assert_eq!(
            serde_json::from_str::<IndexFile>(JSON_SEEDS[3])
                .unwrap()
                .packs[0]
                .blobs
                .len(),
            2
        );
        serde_json::from_str::<KeyFile>(JSON_SEEDS[4]).unwrap();
    }

    /// The plain-header target really parses its seed (the blob area holds both blobs).
    #[test]
    fn plain_header_seed_parses() {
        let key = fuzz_key();
        let header = sample_header();
        let mut tail = key.encrypt(&header);
        tail.extend_from_slice(&(tail.len() as u32).to_le_bytes());
        let blobs = parse_header(&key, &tail, 200 + tail.len() as u64).unwrap();
        assert_eq!(blobs.len(), 2);
        assert_eq!(blobs[1].offset, 100);
    }

    fn fuzz(target: Target) {
        let stats = run(target, test_seconds(), 0x5eed);
        println!(
            "{}: {} inputs in {:.1}s",
            target.name(),
            stats.execs,
            stats.elapsed.as_secs_f64()
        );
        assert!(stats.execs >= target.seeds().len() as u64);
    }

    #[test]
    fn fuzz_tar_reader() {
        fuzz(Target::TarReader);
    }

    #[test]
    fn fuzz_pack_header() {
        fuzz(Target::PackHeader);
    }

    #[test]
    fn fuzz_pack_header_plain() {
        fuzz(Target::PackHeaderPlain);
    }

    #[test]
    fn fuzz_json_files() {
        fuzz(Target::JsonFiles);
    }
}
