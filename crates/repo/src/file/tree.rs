//! Tree blobs: one directory's entries as restic nodes, sorted by name.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::Id;

/// A directory listing stored as a tree blob. Nodes must be sorted by name without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The entries.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Serialises as restic does (JSON plus a trailing newline); the blob id is the SHA-256 of
    /// exactly these bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = serde_json::to_vec(self)?;
        out.push(b'\n');
        Ok(out)
    }
}

/// The type of a node, as restic names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// Regular file (`content` holds its data blobs).
    File,
    /// Directory (`subtree` holds its tree blob).
    Dir,
    /// Symbolic link (`linktarget`).
    Symlink,
    /// Block device (`device`).
    Dev,
    /// Character device (`device`).
    Chardev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Anything this version does not know.
    #[serde(other)]
    Unknown,
}

/// Go's zero time (`0001-01-01T00:00:00Z`), which restic writes for unknown times.
pub fn zero_time() -> DateTime<FixedOffset> {
    chrono::NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().fixed_offset())
        .unwrap_or_default()
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name (one path component).
    pub name: String,
    /// Node type.
    #[serde(rename = "type")]
    pub node_type: NodeType,
    /// Go `os.FileMode`: permission bits plus Go's type and special bits (see [`go_mode`]).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    /// Modification time.
    #[serde(default = "zero_time")]
    pub mtime: DateTime<FixedOffset>,
    /// Access time.
    #[serde(default = "zero_time")]
    pub atime: DateTime<FixedOffset>,
    /// Status change time.
    #[serde(default = "zero_time")]
    pub ctime: DateTime<FixedOffset>,
    /// Owner uid.
    #[serde(default)]
    pub uid: u32,
    /// Owner gid.
    #[serde(default)]
    pub gid: u32,
    /// Owner name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Group name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Inode number.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inode: u64,
    /// `st_dev` of the containing filesystem.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub device_id: u64,
    /// File size in bytes.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub size: u64,
    /// Hard link count.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub links: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub linktarget: String,
    /// Extended attributes.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub extended_attributes: Vec<ExtendedAttribute>,
    /// `st_rdev` of a device node.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub device: u64,
    /// Data blobs of a file, in order (`null` for other types, `[]` for an empty file).
    #[serde(default)]
    pub content: Option<Vec<Id>>,
    /// Tree blob of a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
}

impl Node {
    /// A node of `node_type` named `name` with every other field empty.
    pub fn new(name: impl Into<String>, node_type: NodeType) -> Self {
        Node {
            name: name.into(),
            node_type,
            mode: 0,
            mtime: zero_time(),
            atime: zero_time(),
            ctime: zero_time(),
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            inode: 0,
            device_id: 0,
            size: 0,
            links: 0,
            linktarget: String::new(),
            extended_attributes: Vec::new(),
            device: 0,
            content: None,
            subtree: None,
        }
    }
}

/// An extended attribute of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendedAttribute {
    /// Attribute name.
    pub name: String,
    /// Raw value (base64 in JSON, as Go encodes `[]byte`).
    #[serde(with = "super::key::b64")]
    pub value: Vec<u8>,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn null_vec<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Conversion between unix `st_mode` and Go's `os.FileMode`, which restic stores.
pub mod go_mode {
    /// Go `ModeDir`.
    pub const DIR: u32 = 1 << 31;
    /// Go `ModeSymlink`.
    pub const SYMLINK: u32 = 1 << 27;
    /// Go `ModeDevice`.
    pub const DEVICE: u32 = 1 << 26;
    /// Go `ModeNamedPipe`.
    pub const NAMED_PIPE: u32 = 1 << 25;
    /// Go `ModeSocket`.
    pub const SOCKET: u32 = 1 << 24;
    /// Go `ModeSetuid`.
    pub const SETUID: u32 = 1 << 23;
    /// Go `ModeSetgid`.
    pub const SETGID: u32 = 1 << 22;
    /// Go `ModeCharDevice`.
    pub const CHAR_DEVICE: u32 = 1 << 21;
    /// Go `ModeSticky`.
    pub const STICKY: u32 = 1 << 20;

    use super::NodeType;

    /// Go mode for a node of `ty` with unix permission bits `perm` (`st_mode & 0o7777`).
    pub fn from_unix(ty: NodeType, perm: u32) -> u32 {
        let mut m = perm & 0o777;
        if perm & 0o4000 != 0 {
            m |= SETUID;
        }
        if perm & 0o2000 != 0 {
            m |= SETGID;
        }
        if perm & 0o1000 != 0 {
            m |= STICKY;
        }
        m | match ty {
            NodeType::Dir => DIR,
            NodeType::Symlink => SYMLINK,
            NodeType::Dev => DEVICE,
            NodeType::Chardev => DEVICE | CHAR_DEVICE,
            NodeType::Fifo => NAMED_PIPE,
            NodeType::Socket => SOCKET,
            NodeType::File | NodeType::Unknown => 0,
        }
    }

    /// Unix permission bits (`0o7777` range) of a Go mode.
    pub fn to_unix_perm(mode: u32) -> u32 {
        let mut p = mode & 0o777;
        if mode & SETUID != 0 {
            p |= 0o4000;
        }
        if mode & SETGID != 0 {
            p |= 0o2000;
        }
        if mode & STICKY != 0 {
            p |= 0o1000;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restic_style_file_node_round_trips() {
        let json = r#"{"name":"a.txt","type":"file","mode":420,"mtime":"2022-01-02T03:04:05.123456789+01:00","atime":"2022-01-02T03:04:05+01:00","ctime":"2022-01-02T03:04:05+01:00","uid":1000,"gid":1000,"user":"u","inode":7,"device_id":2049,"size":3,"links":1,"content":["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}"#;
        let node: Node = serde_json::from_str(json).unwrap();
        assert_eq!(node.node_type, NodeType::File);
        assert_eq!(node.mode, 0o644);
        assert_eq!(node.mtime.timestamp_subsec_nanos(), 123_456_789);
        let back: Node = serde_json::from_str(&serde_json::to_string(&node).unwrap()).unwrap();
        assert_eq!(back, node);
    }

    #[test]
    fn directory_nodes_have_null_content_and_empty_files_an_empty_list() {
        let mut dir = Node::new("d", NodeType::Dir);
        dir.subtree = Some(Id::hash(b"t"));
        let s = serde_json::to_string(&dir).unwrap();
        assert!(s.contains("\"content\":null"), "{s}");
        let mut f = Node::new("f", NodeType::File);
        f.content = Some(vec![]);
        assert!(serde_json::to_string(&f)
            .unwrap()
            .contains("\"content\":[]"));
        assert!(zero_time().to_rfc3339().starts_with("0001-01-01T00:00:00"));
    }

    #[test]
    fn go_mode_conversion_keeps_special_bits() {
        let m = go_mode::from_unix(NodeType::Dir, 0o1777);
        assert_eq!(m, go_mode::DIR | go_mode::STICKY | 0o777);
        assert_eq!(go_mode::to_unix_perm(m), 0o1777);
        let m = go_mode::from_unix(NodeType::File, 0o4755);
        assert_eq!(go_mode::to_unix_perm(m), 0o4755);
        assert_eq!(
            go_mode::from_unix(NodeType::Chardev, 0o600) & go_mode::CHAR_DEVICE,
            go_mode::CHAR_DEVICE
        );
    }
}
