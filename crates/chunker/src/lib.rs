//! restic's content-defined chunker, bit for bit: Rabin fingerprints over a 64-byte window with
//! the repository's random irreducible polynomial of degree 53; a chunk ends where the low 20
//! bits of the fingerprint are zero, but never before 512 KiB and always at 8 MiB.
//!
//! Same polynomial, same data → same chunks as restic, so data restic already stored dedups.

pub mod chunker;
pub mod pol;

pub use chunker::{Chunker, Tables, MAX_SIZE, MIN_SIZE};
pub use pol::{ParsePolError, Pol};
