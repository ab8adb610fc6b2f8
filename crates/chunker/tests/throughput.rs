//! Throughput of the chunker's hot loop. Ignored by default (no timing asserts); run with
//! `cargo test -p snapback-chunker --release --test throughput -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use snapback_chunker::{ChunkIter, Chunker, Pol, Tables};

#[test]
#[ignore = "measurement, run by hand with --release"]
fn chunker_throughput() {
    const LEN: usize = 256 << 20;
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let data: Vec<u8> = (0..LEN / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let tables = Arc::new(Tables::new(Pol(0x3DA3358B4DC173)));
    let mb = LEN as f64 / 1e6;
    for round in 0..3 {
        // Push API over 1 MiB buffers, as a streaming caller would.
        let start = Instant::now();
        let mut c = Chunker::new(tables.clone());
        let mut cuts = 0;
        for piece in data.chunks(1 << 20) {
            let mut rest = piece;
            while let Some(n) = c.next_cut(rest) {
                cuts += 1;
                rest = &rest[n..];
            }
        }
        let push = mb / start.elapsed().as_secs_f64();
        // ChunkIter from an in-memory reader (includes copying into chunk Vecs).
        let start = Instant::now();
        let chunks = ChunkIter::new(&data[..], tables.clone()).count();
        let iter = mb / start.elapsed().as_secs_f64();
        println!(
            "round {round}: next_cut {push:.0} MB/s ({cuts} cuts), ChunkIter {iter:.0} MB/s ({chunks} chunks)"
        );
    }
}
