//! Throughput of the chunker's hot loop. Ignored by default (no timing asserts); run with
//! `cargo test -p snapback-chunker --release --test throughput -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use snapback_chunker::{ChunkIter, Chunker, Pol, Tables};

/// Nanoseconds this thread has run on a CPU (Linux), so that other processes competing for
/// the cores do not skew the figure; wall time where that is unavailable.
fn cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// "N MB/s wall, M MB/s CPU" (CPU: this thread's time on a CPU, where known).
fn rates(mb: f64, start: Instant, cpu_start: Option<u64>) -> String {
    let wall = mb / start.elapsed().as_secs_f64();
    match cpu_start.zip(cpu_ns()) {
        Some((a, b)) => format!(
            "{wall:.0} MB/s wall, {:.0} MB/s CPU",
            mb / ((b - a) as f64 / 1e9)
        ),
        None => format!("{wall:.0} MB/s wall"),
    }
}

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
        let (start, cpu) = (Instant::now(), cpu_ns());
        let mut c = Chunker::new(tables.clone());
        let mut cuts = 0;
        for piece in data.chunks(1 << 20) {
            let mut rest = piece;
            while let Some(n) = c.next_cut(rest) {
                cuts += 1;
                rest = &rest[n..];
            }
        }
        let push = rates(mb, start, cpu);
        // ChunkIter from an in-memory reader (includes copying into chunk Vecs).
        let (start, cpu) = (Instant::now(), cpu_ns());
        let chunks = ChunkIter::new(&data[..], tables.clone()).count();
        let iter = rates(mb, start, cpu);
        println!(
            "round {round}: next_cut {push} ({cuts} cuts); ChunkIter {iter} ({chunks} chunks)"
        );
    }
}
