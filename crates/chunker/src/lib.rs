//! restic's content-defined chunker, bit for bit: Rabin fingerprints over a 64-byte window with
//! the repository's random irreducible polynomial of degree 53; a chunk ends where the low 20
//! bits of the fingerprint are zero, but never before 512 KiB and always at 8 MiB.
//!
//! Same polynomial, same file → same chunks as restic (0.14, `github.com/restic/chunker`), so
//! data restic already stored deduplicates with ours.
//!
//! ```
//! use std::sync::Arc;
//! use snapback_chunker::{ChunkIter, Pol, Tables};
//!
//! let pol: Pol = "3da3358b4dc173".parse().unwrap(); // the config's `chunker_polynomial`
//! let tables = Arc::new(Tables::new(pol)); // once per repository
//! let file = vec![0u8; 3 << 20];
//! let chunks: Vec<Vec<u8>> = ChunkIter::new(&file[..], tables).collect::<Result<_, _>>().unwrap();
//! assert_eq!(chunks.len(), 6); // zeros cut as early as allowed: 512 KiB each
//! ```

#![warn(missing_docs)]

pub mod chunker;
pub mod pol;

pub use chunker::{
    chunk_lengths, ChunkIter, Chunker, Tables, DEFAULT_READ_SIZE, MAX_SIZE, MIN_SIZE, SPLIT_MASK,
    WINDOW_SIZE,
};
pub use pol::{ParsePolError, Pol, RANDOM_POL_DEGREE};
