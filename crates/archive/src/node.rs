//! Entry metadata → restic tree nodes.

use std::os::unix::ffi::OsStrExt;

use chrono::{DateTime, FixedOffset};
use snapback_repo::file::tree::go_mode;
use snapback_repo::file::{ExtendedAttribute, Node, NodeType};
use snapback_stream::entry::{EntryKind, Metadata, Timestamp};

/// A restic time from an entry timestamp (UTC; restic accepts any offset).
pub fn to_time(t: Timestamp) -> DateTime<FixedOffset> {
    DateTime::from_timestamp(t.secs, t.nanos)
        .map(|d| d.fixed_offset())
        .unwrap_or_else(snapback_repo::file::tree::zero_time)
}

/// The node type of an entry kind (a hard link is a file node of its own in restic).
pub fn node_type(kind: &EntryKind) -> NodeType {
    match kind {
        EntryKind::File | EntryKind::HardLink { .. } => NodeType::File,
        EntryKind::Dir => NodeType::Dir,
        EntryKind::Symlink { .. } => NodeType::Symlink,
        EntryKind::Fifo => NodeType::Fifo,
        EntryKind::CharDevice { .. } => NodeType::Chardev,
        EntryKind::BlockDevice { .. } => NodeType::Dev,
        EntryKind::Socket => NodeType::Socket,
    }
}

/// A node for an entry named `name`, without `content`/`subtree` (the archiver fills those).
pub fn node_from_entry(name: &[u8], kind: &EntryKind, meta: &Metadata) -> Node {
    let ty = node_type(kind);
    let mut node = Node::new(name, ty);
    node.mode = go_mode::from_unix(ty, meta.mode);
    node.mtime = to_time(meta.mtime);
    node.atime = to_time(meta.atime.unwrap_or(meta.mtime));
    node.ctime = to_time(meta.ctime.unwrap_or(meta.mtime));
    node.uid = meta.uid;
    node.gid = meta.gid;
    node.user = meta.user.clone().unwrap_or_default();
    node.group = meta.group.clone().unwrap_or_default();
    node.inode = meta.inode;
    node.device_id = meta.dev;
    node.links = meta.nlink;
    if ty == NodeType::File {
        node.size = meta.size;
    }
    match kind {
        EntryKind::Symlink { target } => node.linktarget = target.as_os_str().as_bytes().to_vec(),
        EntryKind::CharDevice { rdev } | EntryKind::BlockDevice { rdev } => node.device = *rdev,
        _ => {}
    }
    node.extended_attributes = meta
        .xattrs
        .iter()
        .map(|x| ExtendedAttribute {
            // restic stores attribute names as JSON strings (text), so this one stays lossy.
            name: x.name.to_string_lossy().into_owned(),
            value: x.value.clone(),
        })
        .collect();
    node
}

/// A directory node the stream never described (a parent of the first member, say).
pub fn implicit_dir(name: &[u8], time: DateTime<FixedOffset>) -> Node {
    let mut node = Node::new(name, NodeType::Dir);
    node.mode = go_mode::from_unix(NodeType::Dir, 0o755);
    node.mtime = time;
    node.atime = time;
    node.ctime = time;
    node
}

/// Whether a file is unchanged since the parent snapshot, by restic's rules: same size, mtime,
/// ctime and inode (inode only where both know it).
pub fn unchanged(old: &Node, meta: &Metadata) -> bool {
    old.node_type == NodeType::File
        && old.size == meta.size
        && old.mtime == to_time(meta.mtime)
        && meta.ctime.is_none_or(|c| old.ctime == to_time(c))
        && (meta.inode == 0 || old.inode == 0 || old.inode == meta.inode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_entry_becomes_a_restic_file_node() {
        let meta = Metadata {
            mode: 0o4755,
            uid: 7,
            size: 12,
            mtime: Timestamp {
                secs: 1_600_000_000,
                nanos: 5,
            },
            ..Metadata::default()
        };
        let n = node_from_entry(b"a", &EntryKind::File, &meta);
        assert_eq!(n.node_type, NodeType::File);
        assert_eq!(go_mode::to_unix_perm(n.mode), 0o4755);
        assert_eq!(n.mtime.timestamp(), 1_600_000_000);
        assert_eq!(n.mtime.timestamp_subsec_nanos(), 5);
        assert_eq!(n.size, 12);
        assert!(unchanged(&n, &meta));
        let touched = Metadata {
            mtime: Timestamp {
                secs: 1_600_000_001,
                nanos: 0,
            },
            ..meta
        };
        assert!(!unchanged(&n, &touched));
    }
}
