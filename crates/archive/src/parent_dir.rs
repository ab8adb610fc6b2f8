//! One directory of the parent snapshot, searched by name for every entry of a backup.
//!
//! A scan per entry costs the square of a directory's width (a maildir of 300,000 files: 45
//! billion name comparisons on an unchanged backup). Restic writes a tree's nodes sorted by
//! name, so a sorted tree is bisected; a tree out of order (another tool, or a hostile writer:
//! every holder of the key can write one) is still searched, by a scan.
//!
//! A wide directory's tree (past [`STREAM_FROM`](snapback_repo::file::tree_nodes::STREAM_FROM) bytes of JSON) is not decoded whole: several
//! times its 250 B per entry as `Node`s, it was most of the memory of an incremental backup of
//! a maildir. It stays as stored, compressed, and is read one node at a time
//! ([`StoredTree`]) by a cursor that moves forward as the walk asks for names in order. What
//! the parent says only saves work (an unchanged file is not read again), so when a lookup
//! cannot be answered cheaply (names asked out of order more than [`MAX_RESTARTS`] times, a
//! tree out of order) the answer is "not in the parent", and the file is read.

use snapback_repo::file::tree_nodes::{NodeReader, StoredTree};
use snapback_repo::file::{Node, Tree};
use snapback_repo::tree_read_ahead::{subtree_ids, MAX_WANTED};
use snapback_repo::Id;

use crate::{Error, Result};

/// Times a wide tree's cursor goes back to the start for a name asked out of order (a tar
/// stream not sorted by name); after that, such names are "not in the parent".
pub const MAX_RESTARTS: u32 = 4;

/// Nodes kept of one name (a tree that gives a name more than once is not restic's).
const MAX_EQUAL: usize = 16;

/// A parent snapshot's directory; see the module docs.
pub enum ParentDir {
    /// Decoded, with whether its names are in order.
    Whole { tree: Tree, sorted: bool },
    /// Read a node at a time.
    Streamed(Box<Streamed>),
}

/// A wide tree read a node at a time, forward.
pub struct Streamed {
    stored: StoredTree,
    reader: NodeReader,
    /// The node at the cursor: the first not below the names asked for so far.
    current: Option<Node>,
    /// The last name asked for, and its nodes.
    asked: Vec<u8>,
    equal: Vec<Node>,
    restarts: u32,
    /// Its subdirectories' trees (the first [`MAX_WANTED`]), to be read ahead.
    subdirs: Vec<Id>,
}

impl ParentDir {
    /// Wraps a tree decoded whole, checking its order once.
    pub fn new(tree: Tree) -> Self {
        let sorted = tree.nodes.windows(2).all(|w| w[0].name <= w[1].name);
        ParentDir::Whole { tree, sorted }
    }

    /// A wide tree kept as stored. Reads it through once first: to check its length and id
    /// before anything in it is trusted, to find its subdirectories, and to see that its
    /// names are in order. One that is not is kept empty (see the module docs).
    pub fn streamed(stored: StoredTree) -> Result<Self> {
        let survey = stored.survey(MAX_WANTED, |_| {})?;
        if !survey.sorted {
            tracing::warn!(tree = %stored.id.short(), "a wide parent tree out of order: its directory is read again in full");
            return Ok(ParentDir::new(Tree::default()));
        }
        Ok(ParentDir::Streamed(Box::new(Streamed {
            reader: stored.nodes()?,
            stored,
            current: None,
            asked: Vec::new(),
            equal: Vec::new(),
            restarts: 0,
            subdirs: survey.subdirs,
        })))
    }

    /// Its subdirectories' trees (a wide one's: the first [`MAX_WANTED`]).
    pub fn subtree_ids(&self) -> Vec<Id> {
        match self {
            ParentDir::Whole { tree, .. } => subtree_ids(tree).collect(),
            ParentDir::Streamed(s) => s.subdirs.clone(),
        }
    }

    /// The first node called `name` that `want` accepts, as a scan in order would find it.
    pub fn find(&mut self, name: &[u8], want: impl Fn(&Node) -> bool) -> Result<Option<Node>> {
        match self {
            ParentDir::Whole { tree, sorted } => {
                let nodes = &tree.nodes;
                if !*sorted {
                    return Ok(nodes.iter().find(|n| n.name == name && want(n)).cloned());
                }
                let from = nodes.partition_point(|n| n.name.as_slice() < name);
                Ok(nodes[from..]
                    .iter()
                    .take_while(|n| n.name == name)
                    .find(|n| want(n))
                    .cloned())
            }
            ParentDir::Streamed(s) => s.find(name, want),
        }
    }
}

impl Streamed {
    fn find(&mut self, name: &[u8], want: impl Fn(&Node) -> bool) -> Result<Option<Node>> {
        if name != self.asked.as_slice() {
            if name < self.asked.as_slice() {
                if self.restarts >= MAX_RESTARTS {
                    return Ok(None);
                }
                self.restarts += 1;
                self.reader = self.stored.nodes()?;
                self.current = None;
            }
            self.asked = name.to_vec();
            self.equal.clear();
            loop {
                let cur = match self.current.take() {
                    Some(cur) => cur,
                    None => match self.reader.next_node()? {
                        Some(raw) => parse(&self.stored, raw)?,
                        None => break,
                    },
                };
                match cur.name.as_slice().cmp(name) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Greater => {
                        self.current = Some(cur);
                        break;
                    }
                    std::cmp::Ordering::Equal => {
                        if self.equal.len() < MAX_EQUAL {
                            self.equal.push(cur);
                        }
                    }
                }
            }
        }
        Ok(self.equal.iter().find(|n| want(n)).cloned())
    }
}

fn parse(stored: &StoredTree, raw: &[u8]) -> Result<Node> {
    serde_json::from_slice(raw)
        .map_err(|e| Error::Stream(format!("parent tree {}: {e}", stored.id.short())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use snapback_repo::file::NodeType;

    fn node(name: &[u8], ty: NodeType, size: u64) -> Node {
        let mut n = Node::new(name.to_vec(), ty);
        n.size = size;
        if ty == NodeType::Dir {
            n.subtree = Some(Id::hash(name));
        }
        n
    }

    fn whole(nodes: Vec<Node>) -> ParentDir {
        ParentDir::new(Tree { nodes })
    }

    fn streamed(nodes: Vec<Node>) -> ParentDir {
        let plain = Tree { nodes }.to_bytes().unwrap();
        let stored = StoredTree::new(
            Id::hash(&plain),
            Bytes::from(zstd::bulk::compress(&plain, 3).unwrap()),
            Some(plain.len() as u32),
            "test".into(),
        );
        ParentDir::streamed(stored).unwrap()
    }

    fn sorted_nodes() -> (Vec<Vec<u8>>, Vec<Node>) {
        let names: Vec<Vec<u8>> = (0..500u32)
            .map(|i| format!("f{:05}", i * 2).into_bytes())
            .collect();
        let mut nodes: Vec<Node> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let ty = if i % 7 == 0 {
                    NodeType::Dir
                } else {
                    NodeType::File
                };
                node(n, ty, 1)
            })
            .collect();
        // A name twice (hostile, or another tool): the first accepted one, as a scan.
        nodes.insert(10, node(&names[9], NodeType::Dir, 2));
        (names, nodes)
    }

    #[test]
    fn both_forms_find_what_a_scan_finds() {
        let (names, nodes) = sorted_nodes();
        for mut d in [whole(nodes.clone()), streamed(nodes.clone())] {
            assert!(matches!(
                d,
                ParentDir::Whole { sorted: true, .. } | ParentDir::Streamed(_)
            ));
            // In order, as a walk asks: absent names between present ones too.
            for i in 0..1000u32 {
                let probe = format!("f{i:05}").into_bytes();
                let scan = nodes.iter().find(|n| n.name == probe);
                assert_eq!(d.find(&probe, |_| true).unwrap().as_ref(), scan);
                if probe == names[9] {
                    let dir = d.find(&probe, |n| n.node_type == NodeType::Dir).unwrap();
                    assert_eq!(dir.unwrap().size, 2);
                }
            }
            assert!(d.find(b"z", |_| true).unwrap().is_none());
            let want: Vec<Id> = nodes.iter().filter_map(|n| n.subtree).collect();
            assert_eq!(d.subtree_ids(), want);
        }
    }

    #[test]
    fn a_wide_tree_asked_out_of_order_restarts_a_few_times_then_answers_not_found() {
        let (names, nodes) = sorted_nodes();
        let mut d = streamed(nodes);
        assert!(d.find(&names[400], |_| true).unwrap().is_some());
        for k in 0..MAX_RESTARTS as usize {
            assert!(
                d.find(&names[k], |_| true).unwrap().is_some(),
                "restart {k}"
            );
            assert!(d.find(&names[300 + k], |_| true).unwrap().is_some());
        }
        // No more restarts: an earlier name is "not in the parent" (its file is read again).
        assert!(d.find(&names[0], |_| true).unwrap().is_none());
        assert!(d.find(&names[499], |_| true).unwrap().is_some());
    }

    #[test]
    fn a_tree_out_of_order_is_scanned_or_not_trusted() {
        let nodes = vec![
            node(b"b", NodeType::File, 1),
            node(b"a", NodeType::File, 2),
            node(b"c", NodeType::File, 3),
        ];
        let mut d = whole(nodes.clone());
        assert!(matches!(d, ParentDir::Whole { sorted: false, .. }));
        // Bisection would miss "a" (it lies before "b").
        assert_eq!(d.find(b"a", |_| true).unwrap().unwrap().size, 2);
        assert_eq!(d.find(b"c", |_| true).unwrap().unwrap().size, 3);
        assert!(d.find(b"d", |_| true).unwrap().is_none());
        // A wide one is not searched at all.
        let mut d = streamed(nodes);
        assert!(d.find(b"b", |_| true).unwrap().is_none());
    }

    #[test]
    fn a_wide_tree_that_is_not_what_its_id_says_is_refused() {
        let plain = Tree {
            nodes: sorted_nodes().1,
        }
        .to_bytes()
        .unwrap();
        let stored = StoredTree::new(Id::hash(b"other"), Bytes::from(plain), None, "t".into());
        assert!(ParentDir::streamed(stored).is_err());
    }
}
