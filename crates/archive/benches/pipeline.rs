//! Micro-benchmarks of every CPU stage of the backup pipeline, one core each:
//! chunker, SHA-256, AES-256-CTR + Poly1305 (and its two halves), zstd level 3, pack assembly,
//! plus the "compute floor": chunker + SHA-256 + encryption in a single pass over the data,
//! which is the least CPU any restic-compatible writer must spend per byte of incompressible
//! input (compression and pack hashing come on top).
//!
//!   cargo bench -p snapback-archive --bench pipeline
//!
//! Short on purpose (small samples, 2 s measurement): the whole suite runs in about a minute.
//! Figures are throughput of plaintext bytes (criterion prints MiB/s as "MiB/s").

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sha2::{Digest, Sha256};
use snapback_chunker::{Chunker, Pol, Tables};
use snapback_repo::pack::PackBuilder;
use snapback_repo::{BlobType, Id, Key};

const MIB: usize = 1 << 20;
/// restic's test polynomial; any irreducible degree-53 polynomial behaves the same.
const POL: u64 = 0x003D_A335_8B4D_C173;

/// Deterministic incompressible bytes (xorshift64*).
fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Deterministic word-salad text with Zipf-like word frequencies, like the shared data set's
/// small files (compresses about 2.5-3x with zstd -3).
fn text_bytes(n: usize) -> Vec<u8> {
    let letters = b"etaoinshrdlcumwfgypbvkjxqz";
    let r = random_bytes(64 * 1024, 7);
    let mut ri = 0;
    let mut next = || {
        ri = (ri + 1) % r.len();
        r[ri] as usize
    };
    let words: Vec<Vec<u8>> = (0..3000)
        .map(|_| {
            let len = 2 + next() % 9;
            (0..len)
                .map(|_| letters[(next() * next()) % 26 % letters.len()])
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(n + 64);
    while out.len() < n {
        let per_line = 5 + next() % 11;
        for k in 0..per_line {
            // Zipf-ish: small indexes far more often.
            let idx = (next() * next() * next()) % 3000 / (1 + next() % 64);
            out.extend_from_slice(&words[idx]);
            out.push(if k + 1 == per_line { b'.' } else { b' ' });
        }
        out.push(b'\n');
    }
    out.truncate(n);
    out
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
}

/// Scans the whole buffer, resetting at every cut like the archiver.
fn chunk_all(chunker: &mut Chunker, mut data: &[u8]) -> usize {
    let mut cuts = 0;
    while let Some(n) = chunker.next_cut(data) {
        cuts += 1;
        data = &data[n..];
    }
    cuts
}

fn bench_chunker(c: &mut Criterion) {
    let tables = Arc::new(Tables::new(Pol(POL)));
    let data = random_bytes(64 * MIB, 1);
    let mut g = c.benchmark_group("chunker");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("next_cut/random_64MiB", |b| {
        b.iter(|| {
            let mut ch = Chunker::new(tables.clone());
            // 512 KiB pushes, as the archiver reads.
            let mut cuts = 0;
            for piece in data.chunks(512 * 1024) {
                cuts += chunk_all(&mut ch, piece);
            }
            black_box(cuts)
        })
    });
    g.bench_function("cuts/random_64MiB", |b| {
        b.iter(|| {
            let mut ch = Chunker::new(tables.clone());
            // 512 KiB pushes, as the archiver reads; candidates by four interleaved hashes.
            let mut cuts = Vec::new();
            for piece in data.chunks(512 * 1024) {
                ch.cuts(piece, &mut cuts);
            }
            black_box(cuts.len())
        })
    });
    g.finish();
}

/// The chunks of `data` as the archiver cuts them.
fn chunks_of<'a>(tables: &Arc<Tables>, data: &'a [u8]) -> Vec<&'a [u8]> {
    let mut cuts = Vec::new();
    Chunker::new(tables.clone()).cuts(data, &mut cuts);
    cuts.push(data.len());
    let mut start = 0;
    cuts.iter()
        .map(|&end| {
            let chunk = &data[start..end];
            start = end;
            chunk
        })
        .filter(|c| !c.is_empty())
        .collect()
}

fn bench_sha256(c: &mut Criterion) {
    let data = random_bytes(8 * MIB, 2);
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("1MiB_blobs_8MiB", |b| {
        b.iter(|| {
            for blob in data.chunks(MIB) {
                black_box(Sha256::digest(blob));
            }
        })
    });
    g.finish();
}

fn bench_crypto(c: &mut Criterion) {
    use aes::cipher::{KeyIvInit, StreamCipher};
    use poly1305::universal_hash::{KeyInit, UniversalHash};

    let key = Key::random();
    let blob = random_bytes(MIB, 3);
    let mut g = c.benchmark_group("crypto");
    g.throughput(Throughput::Bytes(blob.len() as u64));
    g.bench_function("key_encrypt_1MiB", |b| {
        b.iter(|| black_box(key.encrypt(&blob)))
    });
    let sealed = key.encrypt(&blob);
    g.bench_function("key_decrypt_1MiB", |b| {
        b.iter(|| black_box(key.decrypt(&sealed).unwrap()))
    });
    // Small blobs (most files of a real tree): the per-message setup is what counts there.
    // `Key` keys AES and Poly1305 once; the AEAD crate it replaced did so for every message.
    let small = random_bytes(32, 5);
    let aead = aes256ctr_poly1305aes::Aes256CtrPoly1305Aes::new(key.as_bytes().into());
    g.throughput(Throughput::Elements(1));
    g.bench_function("key_encrypt_32B", |b| {
        b.iter(|| black_box(key.encrypt(&small)))
    });
    g.bench_function("aead_crate_encrypt_32B", |b| {
        use aes256ctr_poly1305aes::aead::AeadInPlace;
        b.iter(|| {
            let mut buf = small.clone();
            let tag = aead
                .encrypt_in_place_detached((&[9u8; 16]).into(), &[], &mut buf)
                .unwrap();
            black_box((buf, tag))
        })
    });
    g.throughput(Throughput::Bytes(blob.len() as u64));
    g.bench_function("aead_crate_encrypt_1MiB", |b| {
        use aes256ctr_poly1305aes::aead::AeadInPlace;
        let mut buf = blob.clone();
        b.iter(|| {
            let tag = aead
                .encrypt_in_place_detached((&[9u8; 16]).into(), &[], &mut buf)
                .unwrap();
            black_box(tag)
        })
    });
    // The two halves, to see which one limits Key::encrypt.
    let mut buf = blob.clone();
    g.bench_function("aes256ctr_only_1MiB", |b| {
        b.iter(|| {
            let mut c = ctr::Ctr128BE::<aes::Aes256>::new(&[7u8; 32].into(), &[9u8; 16].into());
            c.apply_keystream(&mut buf);
            black_box(&buf);
        })
    });
    g.bench_function("poly1305_compute_unpadded_1MiB", |b| {
        b.iter(|| {
            let mac = poly1305::Poly1305::new(&[5u8; 32].into());
            black_box(mac.compute_unpadded(&blob))
        })
    });
    // The same MAC through the multi-block API (what aes256ctr_poly1305aes could use).
    g.bench_function("poly1305_update_padded_1MiB", |b| {
        b.iter(|| {
            let mut mac = poly1305::Poly1305::new(&[5u8; 32].into());
            mac.update_padded(&blob);
            black_box(mac.finalize())
        })
    });
    g.finish();
}

fn bench_zstd(c: &mut Criterion) {
    let random = random_bytes(4 * MIB, 4);
    let text = text_bytes(4 * MIB);
    let zeros = vec![0u8; 4 * MIB];
    let ratio = |d: &[u8]| d.len() as f64 / zstd::bulk::compress(d, 3).unwrap().len() as f64;
    eprintln!(
        "zstd -3 ratios: random {:.3}, text {:.2}, zeros {:.0}",
        ratio(&random),
        ratio(&text),
        ratio(&zeros)
    );
    let mut g = c.benchmark_group("zstd");
    g.throughput(Throughput::Bytes(4 * MIB as u64));
    for (name, data) in [("random", &random), ("text", &text), ("zeros", &zeros)] {
        for level in [1, 3] {
            g.bench_with_input(
                BenchmarkId::new(format!("compress_l{level}_1MiB_blobs"), name),
                data,
                |b, d| {
                    b.iter(|| {
                        for blob in d.chunks(MIB) {
                            black_box(zstd::bulk::compress(blob, level).unwrap());
                        }
                    })
                },
            );
        }
    }
    // A reused context (what a per-worker encoder could keep) instead of one per blob.
    let mut cctx = zstd::bulk::Compressor::new(3).unwrap();
    g.bench_function("compress_l3_reused_ctx_1MiB_blobs/text", |b| {
        b.iter(|| {
            for blob in text.chunks(MIB) {
                black_box(cctx.compress(blob).unwrap());
            }
        })
    });
    let z = zstd::bulk::compress(&text, 3).unwrap();
    g.bench_function("decompress/text", |b| {
        b.iter(|| black_box(zstd::bulk::decompress(&z, 4 * MIB).unwrap()))
    });
    g.finish();
}

fn bench_pack(c: &mut Criterion) {
    let key = Key::random();
    // 8 MiB pack of 1 MiB sealed blobs (the sink's default), and one of 4 KiB tree-sized blobs.
    let big: Vec<(Id, Vec<u8>)> = (0..8)
        .map(|i| {
            let b = random_bytes(MIB, 10 + i);
            (Id::hash(&b), key.encrypt(&b))
        })
        .collect();
    let small: Vec<(Id, Vec<u8>)> = (0..2048)
        .map(|i| {
            let b = random_bytes(4096, 100 + i);
            (Id::hash(&b), key.encrypt(&b))
        })
        .collect();
    let mut g = c.benchmark_group("pack");
    for (name, blobs) in [("8x1MiB", &big), ("2048x4KiB", &small)] {
        let bytes: usize = blobs.iter().map(|(_, b)| b.len()).sum();
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(BenchmarkId::new("add+finish", name), |b| {
            b.iter(|| {
                let mut p = PackBuilder::default();
                for (id, sealed) in blobs.iter() {
                    p.add(*id, BlobType::Data, sealed, None).unwrap();
                }
                black_box(p.finish(&key).unwrap().id)
            })
        });
    }
    g.finish();
}

/// The compute floor: what one core must do per byte of new incompressible data whatever the
/// pipeline's shape (chunk, hash the blob, encrypt+MAC it), in one pass. A writer that also
/// hashes each pack (pack id) and tries zstd spends more; see BENCHMARKS.md.
fn bench_floor(c: &mut Criterion) {
    let tables = Arc::new(Tables::new(Pol(POL)));
    let key = Key::random();
    let data = random_bytes(32 * MIB, 5);
    let mut g = c.benchmark_group("floor");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("chunk+sha256+encrypt_32MiB", |b| {
        b.iter(|| {
            for blob in chunks_of(&tables, &data) {
                black_box(Id::hash(blob));
                black_box(key.encrypt(blob));
            }
        })
    });
    g.bench_function("chunk+sha256+zstd3+encrypt+packhash_32MiB", |b| {
        b.iter(|| {
            let mut pack = Sha256::new();
            for blob in chunks_of(&tables, &data) {
                black_box(Id::hash(blob));
                let z = zstd::bulk::compress(blob, 3).unwrap();
                let payload = if z.len() < blob.len() { &z[..] } else { blob };
                let sealed = key.encrypt(payload);
                pack.update(&sealed);
            }
            black_box(pack.finalize())
        })
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    bench_chunker(c);
    bench_sha256(c);
    bench_crypto(c);
    bench_zstd(c);
    bench_pack(c);
    bench_floor(c);
}

criterion_group! {
    name = benches;
    config = config();
    targets = all
}
criterion_main!(benches);
