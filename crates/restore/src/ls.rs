//! `ls`: the nodes of a snapshot, formatted as `restic ls` prints them (plain paths, `--long`,
//! `--json` lines).

use std::borrow::Cow;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, Local};
use serde::Serialize;
use snapback_repo::file::quote::go_lossy;
use snapback_repo::file::tree::go_mode;
use snapback_repo::file::{Node, NodeType, SnapshotFile};
use snapback_repo::{BlobIndex, Id, Repository};

use crate::tree_walk::{path_components, TreeWalker, WalkItem};
use crate::Result;

/// Which nodes to list.
#[derive(Debug, Clone, Default)]
pub struct LsOptions {
    /// Absolute snapshot paths to list, as restic: each such node and its direct children
    /// (everything below with `recursive`). Empty: the whole snapshot.
    pub paths: Vec<PathBuf>,
    /// With `paths`, list everything below them.
    pub recursive: bool,
}

/// Whether snapshot path `path` is `prefix` or below it (component-wise).
fn has_path_prefix(prefix: &Path, path: &Path) -> bool {
    let (pre, p) = (path_components(prefix), path_components(path));
    p.len() >= pre.len() && pre.iter().zip(&p).all(|(a, b)| a == b)
}

/// Calls `visit(path, node)` for every listed node, depth-first in name order, with restic's
/// selection rules; returns how many were listed. A directory that is neither listed nor on the
/// way to a listed path is not loaded.
pub async fn list<F>(
    repo: &Repository,
    index: Arc<BlobIndex>,
    root_tree: Id,
    opts: &LsOptions,
    mut visit: F,
) -> Result<u64>
where
    F: FnMut(&Path, &Node) -> Result<()>,
{
    let mut walker = TreeWalker::new(repo.clone(), index, root_tree, Path::new("/"));
    let mut count = 0u64;
    while let Some(item) = walker.next().await? {
        let WalkItem::Node { path, node } = item else {
            continue;
        };
        let within = opts.paths.is_empty() || opts.paths.iter().any(|d| has_path_prefix(d, &path));
        if within {
            visit(&path, &node)?;
            count += 1;
            if opts.recursive {
                continue;
            }
        }
        let approaching =
            opts.paths.is_empty() || opts.paths.iter().any(|d| has_path_prefix(&path, d));
        if !approaching {
            walker.skip_subtree();
        }
    }
    Ok(count)
}

/// Go's `os.FileMode.String()` of a node's mode with its type bits (`drwxr-xr-x`, `Lrwxrwxrwx`,
/// `urwxr-xr-x` for setuid), as restic prints modes.
pub fn mode_string(node: &Node) -> String {
    let type_bits = match node.node_type {
        NodeType::Dir => go_mode::DIR,
        NodeType::Symlink => go_mode::SYMLINK,
        NodeType::Dev => go_mode::DEVICE,
        NodeType::Chardev => go_mode::DEVICE | go_mode::CHAR_DEVICE,
        NodeType::Fifo => go_mode::NAMED_PIPE,
        NodeType::Socket => go_mode::SOCKET,
        NodeType::File | NodeType::Unknown => 0,
    };
    go_mode_string(node.mode | type_bits)
}

/// Go's `os.FileMode.String()`: one letter per set type/special bit, then `rwx` triplets.
pub fn go_mode_string(mode: u32) -> String {
    const LETTERS: &str = "dalTLDpSugct?";
    let mut s: String = LETTERS
        .chars()
        .enumerate()
        .filter(|(i, _)| mode & (1 << (31 - i)) != 0)
        .map(|(_, c)| c)
        .collect();
    if s.is_empty() {
        s.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    s
}

/// A time as Go's `time.RFC3339Nano` (trailing zeros of the fraction dropped, `Z` for UTC).
pub fn go_time(t: &DateTime<FixedOffset>) -> String {
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    if t.offset().local_minus_utc() == 0 {
        s.push('Z');
    } else {
        s.push_str(&t.format("%:z").to_string());
    }
    s
}

/// `restic ls --long`: mode, uid, gid, size, local mtime, path (and `-> target` for symlinks).
/// Path and target are raw bytes, as restic prints them.
pub fn format_long(path: &Path, node: &Node) -> Vec<u8> {
    let mut line = format!(
        "{} {:5} {:5} {:6} {} ",
        mode_string(node),
        node.uid,
        node.gid,
        node.size,
        node.mtime.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S"),
    )
    .into_bytes();
    line.extend_from_slice(path.as_os_str().as_bytes());
    if node.node_type == NodeType::Symlink {
        line.extend_from_slice(b" -> ");
        line.extend_from_slice(&node.linktarget);
    }
    line
}

/// One `restic ls --json` node line, fields in restic's order. JSON text must be UTF-8, so
/// name and path are lossy here, as restic's (Go's encoder writes U+FFFD per invalid byte).
#[derive(Debug, Serialize)]
pub struct JsonNode<'a> {
    /// Node name.
    pub name: Cow<'a, str>,
    /// Node type (`file`, `dir`, ...).
    #[serde(rename = "type")]
    pub node_type: NodeType,
    /// Absolute snapshot path.
    pub path: Cow<'a, str>,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Size: present for files only (even when zero), as restic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Go file mode with type bits (omitted when zero).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    /// The mode as a string (`drwxr-xr-x`).
    pub permissions: String,
    /// Modification time (RFC 3339, nanoseconds).
    pub mtime: String,
    /// Access time.
    pub atime: String,
    /// Status change time.
    pub ctime: String,
    /// Always `node`.
    pub struct_type: &'static str,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

impl<'a> JsonNode<'a> {
    /// The JSON line content for `node` at `path`.
    pub fn new(path: &'a Path, node: &'a Node) -> Self {
        JsonNode {
            name: go_lossy(&node.name),
            node_type: node.node_type,
            path: go_lossy(path.as_os_str().as_bytes()),
            uid: node.uid,
            gid: node.gid,
            size: (node.node_type == NodeType::File).then_some(node.size),
            mode: node.mode,
            permissions: mode_string(node),
            mtime: go_time(&node.mtime),
            atime: go_time(&node.atime),
            ctime: go_time(&node.ctime),
            struct_type: "node",
        }
    }
}

/// The first line of `restic ls --json`: the snapshot plus `id`, `short_id` and
/// `struct_type: "snapshot"`.
pub fn snapshot_json(id: &Id, snapshot: &SnapshotFile) -> serde_json::Value {
    let mut v = serde_json::to_value(snapshot).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(obj) = v.as_object_mut() {
        obj.insert("id".into(), id.to_hex().into());
        obj.insert("short_id".into(), id.short().into());
        obj.insert("struct_type".into(), "snapshot".into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_print_like_go() {
        assert_eq!(go_mode_string(0o644), "-rw-r--r--");
        assert_eq!(go_mode_string(go_mode::DIR | 0o755), "drwxr-xr-x");
        assert_eq!(go_mode_string(go_mode::SETUID | 0o755), "urwxr-xr-x");
        assert_eq!(go_mode_string(go_mode::SYMLINK | 0o777), "Lrwxrwxrwx");
        assert_eq!(go_mode_string(go_mode::NAMED_PIPE | 0o644), "prw-r--r--");
        let mut n = Node::new("d", NodeType::Dir);
        n.mode = 0o700; // type bit missing in the node: added from the type
        assert_eq!(mode_string(&n), "drwx------");
    }

    #[test]
    fn times_print_like_go_rfc3339nano() {
        let t = DateTime::parse_from_rfc3339("2026-11-22T19:05:41.085344700Z").unwrap();
        assert_eq!(go_time(&t), "2026-11-22T19:05:41.0853447Z");
        let t = DateTime::parse_from_rfc3339("2020-01-02T03:04:05+01:00").unwrap();
        assert_eq!(go_time(&t), "2020-01-02T03:04:05+01:00");
        assert_eq!(
            go_time(&snapback_repo::file::tree::zero_time()),
            "0001-01-01T00:00:00Z"
        );
    }

    #[test]
    fn path_prefix_is_component_wise() {
        let p = |s: &str| PathBuf::from(s);
        assert!(has_path_prefix(&p("/a"), &p("/a")));
        assert!(has_path_prefix(&p("/a"), &p("/a/b")));
        assert!(!has_path_prefix(&p("/a"), &p("/ab")));
        assert!(has_path_prefix(&p("/"), &p("/x")));
        assert!(!has_path_prefix(&p("/a/b"), &p("/a")));
    }

    #[test]
    fn json_node_fields_follow_restic() {
        let mut n = Node::new("f", NodeType::File);
        n.mode = 0o640;
        n.size = 3;
        let line = serde_json::to_string(&JsonNode::new(Path::new("/x/f"), &n)).unwrap();
        assert!(
            line.starts_with(r#"{"name":"f","type":"file","path":"/x/f","uid":0,"gid":0,"size":3,"mode":416,"permissions":"-rw-r-----","mtime":"0001-01-01T00:00:00Z""#),
            "{line}"
        );
        assert!(line.ends_with(r#""struct_type":"node"}"#));
        n.size = 0;
        let line = serde_json::to_string(&JsonNode::new(Path::new("/x/f"), &n)).unwrap();
        assert!(line.contains(r#""size":0,"#), "{line}");
        let raw = Node::new(&b"a\xff"[..], NodeType::Dir);
        let line = serde_json::to_string(&JsonNode::new(Path::new("/a"), &raw)).unwrap();
        assert!(line.starts_with("{\"name\":\"a\u{fffd}\""), "{line}");
        let d = Node::new("d", NodeType::Dir);
        let line = serde_json::to_string(&JsonNode::new(Path::new("/d"), &d)).unwrap();
        assert!(!line.contains("size"), "{line}");
    }
}
