//! One directory of the parent snapshot, searched by name for every entry of a backup.
//!
//! A scan per entry costs the square of a directory's width (a maildir of 300,000 files: 45
//! billion name comparisons on an unchanged backup). Restic writes a tree's nodes sorted by
//! name, so a sorted tree is bisected; a tree out of order (another tool, or a hostile writer:
//! every holder of the key can write one) is still searched, by a scan.

use snapback_repo::file::{Node, Tree};

/// A parent snapshot's tree, with whether its names are in order.
pub struct ParentDir {
    tree: Tree,
    sorted: bool,
}

impl ParentDir {
    /// Wraps a tree read from the repository, checking its order once.
    pub fn new(tree: Tree) -> Self {
        let sorted = tree.nodes.windows(2).all(|w| w[0].name <= w[1].name);
        ParentDir { tree, sorted }
    }

    /// The tree itself.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The first node called `name` that `want` accepts, as a scan in order would find it.
    pub fn find(&self, name: &[u8], want: impl Fn(&Node) -> bool) -> Option<&Node> {
        let nodes = &self.tree.nodes;
        if !self.sorted {
            return nodes.iter().find(|n| n.name == name && want(n));
        }
        let from = nodes.partition_point(|n| n.name.as_slice() < name);
        nodes[from..]
            .iter()
            .take_while(|n| n.name == name)
            .find(|n| want(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapback_repo::file::NodeType;

    fn node(name: &[u8], ty: NodeType, size: u64) -> Node {
        let mut n = Node::new(name.to_vec(), ty);
        n.size = size;
        n
    }

    fn dir(nodes: Vec<Node>) -> ParentDir {
        ParentDir::new(Tree { nodes })
    }

    #[test]
    fn a_sorted_tree_finds_what_a_scan_finds() {
        let names: Vec<Vec<u8>> = (0..500u32)
            .map(|i| format!("f{:05}", i * 2).into_bytes())
            .collect();
        let mut nodes: Vec<Node> = names.iter().map(|n| node(n, NodeType::File, 1)).collect();
        // A name twice (hostile, or another tool): the first accepted one, as a scan.
        nodes.insert(10, node(&names[9], NodeType::Dir, 2));
        let d = dir(nodes.clone());
        assert!(d.sorted);
        for probe in [
            b"f00018".to_vec(),
            b"f00019".to_vec(),
            b"f00998".to_vec(),
            b"a".to_vec(),
            b"z".to_vec(),
            b"f00000".to_vec(),
        ] {
            let scan = nodes.iter().find(|n| n.name == probe);
            assert_eq!(
                d.find(&probe, |_| true).map(|n| &n.name),
                scan.map(|n| &n.name)
            );
        }
        assert_eq!(
            d.find(&names[9], |_| true).unwrap().node_type,
            NodeType::File
        );
        assert_eq!(
            d.find(&names[9], |n| n.node_type == NodeType::Dir)
                .unwrap()
                .size,
            2
        );
    }

    #[test]
    fn a_tree_out_of_order_is_scanned() {
        let d = dir(vec![
            node(b"b", NodeType::File, 1),
            node(b"a", NodeType::File, 2),
            node(b"c", NodeType::File, 3),
        ]);
        assert!(!d.sorted);
        // Bisection would miss "a" (it lies before "b").
        assert_eq!(d.find(b"a", |_| true).unwrap().size, 2);
        assert_eq!(d.find(b"c", |_| true).unwrap().size, 3);
        assert!(d.find(b"d", |_| true).is_none());
    }
}
