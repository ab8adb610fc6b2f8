//! The JSON files of a restic repository, as serde types.
//!
//! Field names, optional fields and encodings follow restic 0.14 so that what we write is read by
//! restic and what restic writes is read by us.

pub mod config;
pub mod index;
pub mod key;
pub mod lock;
pub mod quote;
pub mod snapshot;
pub mod tree;
pub mod tree_nodes;

pub use config::ConfigFile;
pub use index::{IndexBlob, IndexFile, IndexPack};
pub use key::{KeyFile, MasterKeyJson};
pub use lock::LockFile;
pub use snapshot::SnapshotFile;
pub use tree::{ExtendedAttribute, Node, NodeType, Tree};

/// Reads up to `want` more bytes from `reader` onto the end of `buf` (retrying an interrupted
/// read), for the readers that parse a large document a window at a time (index files, wide
/// trees); returns how many came, 0 at the end. On an error `buf` is as it was.
pub(crate) fn read_more(
    reader: &mut impl std::io::Read,
    buf: &mut Vec<u8>,
    want: usize,
) -> std::io::Result<usize> {
    let len = buf.len();
    buf.resize(len + want, 0);
    let got = loop {
        match reader.read(&mut buf[len..]) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                buf.truncate(len);
                return Err(e);
            }
        }
    };
    buf.truncate(len + got);
    Ok(got)
}
