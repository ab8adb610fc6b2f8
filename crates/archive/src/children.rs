//! A directory listing kept encoded while it grows (issue 13: a directory of a million entries).
//!
//! An open directory holds each child as the JSON it will have in the tree blob, all in one
//! buffer, plus its raw name in a second buffer and three offsets: about the encoded size per
//! child, instead of a `Node` (~280 B) with its name and content ids on the heap. Children that
//! arrive sorted by name (every path backup, `tar --sort=name`) are already the tree blob's body,
//! so closing the directory only appends the tail; others are sorted and copied once at close.
//!
//! A wide directory does not grow that buffer past [`RUN_BYTES`]: it is sorted into a compressed
//! [`Run`] and started again, and at close the runs are merged into the tree blob
//! ([`crate::runs`]).

use snapback_repo::file::tree::{Node, TREE_HEAD, TREE_TAIL};
use snapback_repo::file::tree_nodes::StoredTree;

use crate::error::{Error, Result};
use crate::runs::{merge, MergedTree, Run};

/// Encoded children held as they come before they are sorted into a compressed run. Below
/// this (a directory of up to some 15,000 small files) nothing changes: the buffer becomes the
/// tree blob as before.
pub const RUN_BYTES: usize = 4 * 1024 * 1024;

/// Room past [`RUN_BYTES`] for the node that fills a run (a bigger one, with long extended
/// attributes, grows the buffer as before).
const RUN_SLACK: usize = 64 * 1024;

/// [`Children::find_last`]'s position of a child found in a compressed run: it cannot be
/// removed there, but a later child of the same name replaces it when the runs are merged.
pub const IN_RUN: usize = usize::MAX;

/// [`Slot::start`] and [`Slot::end`] of a removed child.
const REMOVED: u32 = u32::MAX;

/// Where one child's bytes are in [`Children`]'s buffers.
#[derive(Clone, Copy)]
struct Slot {
    /// The node's JSON: `buf[start..end]`.
    start: u32,
    end: u32,
    /// The raw name: `names[previous slot's name_end..name_end]`.
    name_end: u32,
}

/// One directory's children, encoded; see the module docs.
pub struct Children {
    /// [`TREE_HEAD`], then the nodes' JSON separated by `,` (once sorted: the tree blob but its
    /// tail). Removed or replaced children may leave unused bytes until the next sort.
    buf: Vec<u8>,
    /// Raw names, one after the other.
    names: Vec<u8>,
    slots: Vec<Slot>,
    /// `buf` holds exactly the slots, in order, each name greater than the one before: the tree
    /// blob needs no sorting.
    sorted: bool,
    /// Earlier children, sorted and compressed, oldest first (a wide directory only).
    runs: Vec<Run>,
    /// [`Run::held_bytes`] of all `runs`, kept so that [`Children::held_bytes`] is O(1).
    run_bytes: usize,
}

impl Default for Children {
    fn default() -> Self {
        Children {
            buf: TREE_HEAD.to_vec(),
            names: Vec::new(),
            slots: Vec::new(),
            sorted: true,
            runs: Vec::new(),
            run_bytes: 0,
        }
    }
}

impl Children {
    /// An empty listing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A listing of `nodes`.
    #[cfg(test)]
    pub fn from_nodes(nodes: &[Node]) -> Result<Self> {
        let mut me = Self::new();
        for n in nodes {
            me.push(n)?;
        }
        Ok(me)
    }

    /// The listing of a stored tree blob, decompressed and decoded one node at a time (a
    /// tree decoded whole holds its JSON and a `Node` per entry, several times its stored
    /// size). The blob's length and id are checked at its end, before the listing is returned.
    pub fn from_stored(tree: &StoredTree) -> Result<Self> {
        let bad = |e: serde_json::Error| Error::Stream(format!("tree {}: {e}", tree.id.short()));
        let mut reader = tree.nodes()?;
        let mut me = Self::new();
        while let Some(raw) = reader.next_node()? {
            let node: Node = serde_json::from_slice(raw).map_err(bad)?;
            me.push(&node)?;
        }
        Ok(me)
    }

    /// A copy, for the cache of finished listings; `None` for a listing with runs (a wide
    /// directory: too big for the cache anyway).
    pub fn clone_small(&self) -> Option<Children> {
        if self.has_runs() {
            return None;
        }
        Some(Children {
            buf: self.buf.clone(),
            names: self.names.clone(),
            slots: self.slots.clone(),
            sorted: self.sorted,
            runs: Vec::new(),
            run_bytes: 0,
        })
    }

    /// Whether the buffer is the tree blob's body already (see [`Self::into_sorted_in`]).
    pub fn is_sorted(&self) -> bool {
        self.sorted && self.runs.is_empty()
    }

    /// Whether children were sorted into runs: the tree blob comes from [`Self::into_merged`].
    pub fn has_runs(&self) -> bool {
        !self.runs.is_empty()
    }

    /// Bytes of the encoded nodes (about the tree blob's size).
    pub fn encoded_len(&self) -> usize {
        let runs: usize = self.runs.iter().map(|r| r.json_bytes() + r.len()).sum();
        self.buf.len() + TREE_TAIL.len() + runs
    }

    /// Bytes held for the runs (compressed).
    pub fn run_bytes(&self) -> usize {
        self.run_bytes
    }

    /// Memory the listing holds: its buffers' capacity and its runs (the runs' merge at close
    /// comes on top: about their size again, for the compressed blob it writes).
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
            + self.names.capacity()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.run_bytes
    }

    /// How many children are held (a name given more than once may count more than once).
    pub fn entries(&self) -> usize {
        self.runs.iter().map(Run::len).sum::<usize>() + self.slots.len()
    }

    /// Adds a child; a later child with the same name replaces an earlier one at close.
    pub fn push(&mut self, node: &Node) -> Result<()> {
        if self.sorted {
            if let Some(last) = self.slots.len().checked_sub(1) {
                if node.name.as_slice() <= self.name(last) {
                    self.sorted = false;
                }
            }
        }
        if self.buf.len() >= RUN_BYTES / 2 && self.buf.capacity() < RUN_BYTES + RUN_SLACK {
            // Room for the whole run now: doubling at RUN_BYTES would allocate twice what
            // the run ever uses, and count it in `held_bytes`.
            self.buf
                .reserve_exact(RUN_BYTES + RUN_SLACK - self.buf.len());
        }
        if !self.slots.is_empty() {
            self.buf.push(b',');
        }
        let start = self.buf.len();
        node.encode_into(&mut self.buf)
            .map_err(|e| Error::Pipeline(format!("tree encoding: {e}")))?;
        self.names.extend_from_slice(&node.name);
        let slot = Slot {
            start: offset(start)?,
            end: offset(self.buf.len())?,
            name_end: offset(self.names.len())?,
        };
        self.slots.push(slot);
        if self.buf.len() >= RUN_BYTES {
            self.spill()?;
        }
        Ok(())
    }

    /// Sorts the children held as they came into a compressed run and starts again, keeping
    /// the buffers' room for the next run.
    fn spill(&mut self) -> Result<()> {
        let order = self.sorted_order();
        let run = Run::new(order.iter().map(|&i| {
            let s = self.slots[i as usize];
            (
                self.name(i as usize),
                &self.buf[s.start as usize..s.end as usize],
            )
        }))?;
        self.run_bytes += run.held_bytes();
        self.runs.push(run);
        self.buf.truncate(TREE_HEAD.len());
        self.names.clear();
        self.slots.clear();
        self.sorted = true;
        Ok(())
    }

    /// The positions of the children to keep, sorted by name bytes (as restic, which sorts Go
    /// strings): of a name given twice, the last.
    fn sorted_order(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&i| !self.removed(i as usize))
            .collect();
        // Stable: among equal names the latest comes last, and is the one kept.
        order.sort_by(|&a, &b| self.name(a as usize).cmp(self.name(b as usize)));
        let mut keep = Vec::with_capacity(order.len());
        for (k, &i) in order.iter().enumerate() {
            if let Some(&next) = order.get(k + 1) {
                if self.name(next as usize) == self.name(i as usize) {
                    continue;
                }
            }
            keep.push(i);
        }
        keep
    }

    /// The tree blob of a listing with runs: the children held now become the newest run,
    /// and all runs are merged, compressed at `level` (see [`crate::runs::merge`]).
    pub fn into_merged(mut self, level: Option<i32>) -> Result<MergedTree> {
        if !self.slots.is_empty() {
            self.spill()?;
        }
        tracing::debug!(
            runs = self.runs.len(),
            held = self.run_bytes(),
            json = self.encoded_len(),
            "merging a wide directory's tree"
        );
        // The buffers' room is not needed for the merge.
        let runs = std::mem::take(&mut self.runs);
        drop(self);
        merge(runs, level)
    }

    fn name(&self, i: usize) -> &[u8] {
        let from = match i.checked_sub(1) {
            Some(p) => self.slots[p].name_end as usize,
            None => 0,
        };
        &self.names[from..self.slots[i].name_end as usize]
    }

    fn removed(&self, i: usize) -> bool {
        self.slots[i].start == REMOVED
    }

    fn node(&self, i: usize) -> Result<Node> {
        let s = self.slots[i];
        serde_json::from_slice(&self.buf[s.start as usize..s.end as usize])
            .map_err(|e| Error::Pipeline(format!("tree decoding: {e}")))
    }

    /// The last child called `name` that `want` accepts, with its position.
    pub fn find_last(
        &self,
        name: &[u8],
        want: impl Fn(&Node) -> bool,
    ) -> Result<Option<(usize, Node)>> {
        if self.sorted {
            // Names strictly increase: one slot at most, found by bisection (every directory
            // of a stream asks its parent's listing: a scan would cost the square of its width).
            let (mut lo, mut hi) = (0, self.slots.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.name(mid) < name {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let i = lo;
            if i < self.slots.len() && self.name(i) == name && !self.removed(i) {
                let node = self.node(i)?;
                if want(&node) {
                    return Ok(Some((i, node)));
                }
            }
            return self.find_in_runs(name, want);
        }
        for i in (0..self.slots.len()).rev() {
            if !self.removed(i) && self.name(i) == name {
                let node = self.node(i)?;
                if want(&node) {
                    return Ok(Some((i, node)));
                }
            }
        }
        self.find_in_runs(name, want)
    }

    /// [`Self::find_last`] in the runs, newest first; the position is [`IN_RUN`].
    fn find_in_runs(
        &self,
        name: &[u8],
        want: impl Fn(&Node) -> bool,
    ) -> Result<Option<(usize, Node)>> {
        for run in self.runs.iter().rev() {
            if let Some(json) = run.find(name)? {
                let node: Node = serde_json::from_slice(&json)
                    .map_err(|e| Error::Pipeline(format!("tree decoding: {e}")))?;
                if want(&node) {
                    return Ok(Some((IN_RUN, node)));
                }
            }
        }
        Ok(None)
    }

    /// Removes the child at `pos` (from [`Self::find_last`]). Its bytes stay until the next
    /// sort. A child in a run ([`IN_RUN`]) stays: the caller adds its replacement later.
    pub fn remove(&mut self, pos: usize) {
        if let Some(s) = self.slots.get_mut(pos) {
            // A slot stays (its name bytes delimit the next name); it just has no node.
            s.start = REMOVED;
            s.end = REMOVED;
            self.sorted = false;
        }
    }

    /// Sorts by name bytes (as restic, which sorts Go strings), keeping the last child of each
    /// name, and returns the listing with its buffer laid out as the tree blob's body.
    #[cfg(test)]
    pub fn into_sorted(self) -> Result<Self> {
        self.into_sorted_in(Vec::new()).map(|(sorted, _)| sorted)
    }

    /// [`Self::into_sorted`], laying the sorted body out in `buf` (an empty buffer, recycled
    /// by the caller so that its pages are not faulted in again for every directory); returns
    /// the buffer the listing no longer needs (the unsorted body, or `buf` when it was sorted
    /// already).
    pub fn into_sorted_in(self, mut buf: Vec<u8>) -> Result<(Self, Vec<u8>)> {
        if self.has_runs() {
            return Err(Error::Pipeline(
                "a listing with runs is merged, not sorted".into(),
            ));
        }
        if self.sorted {
            return Ok((self, buf));
        }
        let order = self.sorted_order();
        buf.clear();
        buf.extend_from_slice(TREE_HEAD);
        buf.reserve(self.buf.len().saturating_sub(buf.len()));
        let mut out = Children {
            buf,
            ..Children::new()
        };
        out.names.reserve(self.names.len());
        out.slots.reserve(order.len());
        for &i in &order {
            let i = i as usize;
            if !out.slots.is_empty() {
                out.buf.push(b',');
            }
            let s = self.slots[i];
            let start = out.buf.len();
            out.buf
                .extend_from_slice(&self.buf[s.start as usize..s.end as usize]);
            out.names.extend_from_slice(self.name(i));
            out.slots.push(Slot {
                start: offset(start)?,
                end: offset(out.buf.len())?,
                name_end: offset(out.names.len())?,
            });
        }
        Ok((out, self.buf))
    }

    /// The tree blob of a sorted listing (see [`Self::into_sorted`]), leaving the listing as
    /// it was.
    #[cfg(test)]
    pub fn tree_bytes(&self) -> Vec<u8> {
        self.tree_bytes_in(Vec::new())
    }

    /// [`Self::tree_bytes`], written into `out` (emptied first; a recycled buffer).
    pub fn tree_bytes_in(&self, mut out: Vec<u8>) -> Vec<u8> {
        out.clear();
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.buf);
        out.extend_from_slice(TREE_TAIL);
        out
    }

    /// The tree blob of a sorted listing, without a copy.
    pub fn into_tree_bytes(self) -> Vec<u8> {
        let mut buf = self.buf;
        buf.extend_from_slice(TREE_TAIL);
        buf
    }
}

/// An offset into a listing's buffers: a listing of more than 4 GiB is refused, not wrapped.
fn offset(n: usize) -> Result<u32> {
    u32::try_from(n)
        .map_err(|_| Error::Stream("a directory's listing exceeds 4 GiB of tree data".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapback_repo::file::tree::{NodeType, Tree};

    fn file(name: &[u8], size: u64) -> Node {
        let mut n = Node::new(name.to_vec(), NodeType::File);
        n.size = size;
        n
    }

    fn tree(nodes: Vec<Node>) -> Vec<u8> {
        Tree { nodes }.to_bytes().unwrap()
    }

    #[test]
    fn sorted_children_are_the_tree_blob_as_they_come() {
        let nodes = vec![file(b"a", 1), file(b"b", 2), file(b"c\xff", 3)];
        let c = Children::from_nodes(&nodes).unwrap();
        assert!(c.sorted);
        let c = c.into_sorted().unwrap();
        assert_eq!(c.tree_bytes(), tree(nodes.clone()));
        assert_eq!(c.into_tree_bytes(), tree(nodes));
        assert_eq!(Children::new().into_tree_bytes(), tree(vec![]));
    }

    #[test]
    fn unsorted_children_are_sorted_and_the_last_of_a_name_wins() {
        let c = Children::from_nodes(&[
            file(b"b", 1),
            file(b"a", 2),
            file(b"b", 3),
            file(b"ab", 4),
            file(b"a", 5),
        ])
        .unwrap();
        assert!(!c.sorted);
        let c = c.into_sorted().unwrap();
        let want = vec![file(b"a", 5), file(b"ab", 4), file(b"b", 3)];
        assert_eq!(c.tree_bytes(), tree(want));
        assert_eq!(c.slots.len(), 3);
    }

    #[test]
    fn recycled_buffers_leave_no_trace_in_the_tree_blob() {
        let nodes = vec![file(b"b", 1), file(b"a", 2), file(b"c", 3)];
        let c = Children::from_nodes(&nodes).unwrap();
        let garbage = || b"left over from another directory".repeat(100);
        let (c, unused) = c.into_sorted_in(garbage()).unwrap();
        assert!(c.is_sorted());
        assert!(
            unused.starts_with(TREE_HEAD),
            "the unsorted body comes back"
        );
        let want = tree(vec![file(b"a", 2), file(b"b", 1), file(b"c", 3)]);
        assert_eq!(c.tree_bytes_in(garbage()), want);
        // A sorted listing hands the spare back untouched.
        let sorted = Children::from_nodes(&[file(b"a", 2)]).unwrap();
        let (_, spare) = sorted.into_sorted_in(garbage()).unwrap();
        assert_eq!(spare, garbage());
    }

    #[test]
    fn a_tree_blob_reads_back_as_its_listing() {
        let nodes = vec![
            file(b"a", 1),
            Node::new("d", NodeType::Dir),
            file(b"z\xff", 3),
        ];
        let bytes = tree(nodes);
        let c = Children::from_stored(&stored(&bytes)).unwrap();
        assert!(c.sorted);
        assert_eq!(c.find_last(b"z\xff", |_| true).unwrap().unwrap().1.size, 3);
        assert_eq!(c.into_tree_bytes(), bytes);
        assert!(Children::from_stored(&stored(b"{\"nodes\":[{]}")).is_err());
        // A blob whose bytes are not those of its id is refused, though every node is fine.
        let mut other = stored(&bytes);
        other.id = snapback_repo::Id::hash(b"another tree");
        assert!(Children::from_stored(&other).is_err());
    }

    /// `bytes` as a stored, uncompressed tree blob with its true id.
    fn stored(bytes: &[u8]) -> StoredTree {
        StoredTree::new(
            snapback_repo::Id::hash(bytes),
            bytes::Bytes::copy_from_slice(bytes),
            None,
            "test tree".into(),
        )
    }

    /// Small files as a tar stream lists them: every node with its own content id.
    fn wide(n: u32, order: impl Fn(u32) -> u32) -> Vec<Node> {
        (0..n)
            .map(|i| {
                let k = order(i);
                let mut f = file(format!("file-{k:07}").as_bytes(), u64::from(k % 40));
                f.content = Some(vec![snapback_repo::Id::hash(&k.to_le_bytes())]);
                f.mode = 0o644;
                f
            })
            .collect()
    }

    fn sorted_tree(mut nodes: Vec<Node>) -> Vec<u8> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        tree(nodes)
    }

    #[test]
    fn a_wide_directory_is_held_in_compressed_runs_and_merged_into_its_tree_blob() {
        // Out of order (as a tar stream may be), 40,000 nodes: several runs.
        let nodes = wide(40_000, |i| (i * 7919) % 40_000);
        let mut c = Children::new();
        for n in &nodes {
            c.push(n).unwrap();
        }
        assert!(c.runs.len() >= 2, "{} runs", c.runs.len());
        assert!(!c.is_sorted() && c.has_runs());
        let want = sorted_tree(nodes.clone());
        assert_eq!(c.encoded_len(), want.len());
        // What is held: the runs compressed, far below the JSON (the ids do not compress).
        let in_runs = c.encoded_len() - c.buf.len() - TREE_TAIL.len();
        let held = c.run_bytes();
        assert!(held * 4 < in_runs, "held {held} for {in_runs} B of JSON");
        // Lookups reach into the runs.
        let (pos, n) = c.find_last(b"file-0000007", |_| true).unwrap().unwrap();
        assert_eq!((pos, n.size), (IN_RUN, 7));
        assert!(c.find_last(b"file-0040000", |_| true).unwrap().is_none());
        for level in [Some(3), None] {
            let mut c = Children::new();
            for n in &nodes {
                c.push(n).unwrap();
            }
            let m = c.into_merged(level).unwrap();
            let plain = match level {
                Some(_) => zstd::stream::decode_all(m.bytes.as_slice()).unwrap(),
                None => m.bytes.clone(),
            };
            assert_eq!(plain, want);
            assert_eq!(
                (m.id, m.plain_len),
                (snapback_repo::Id::hash(&want), want.len())
            );
        }
    }

    #[test]
    fn a_name_given_again_after_its_run_was_written_replaces_it() {
        let mut nodes = wide(30_000, |i| i);
        let mut again = file(b"file-0000003", 999);
        again.content = Some(Vec::new());
        nodes.push(again.clone());
        let mut c = Children::new();
        for n in &nodes {
            c.push(n).unwrap();
        }
        assert!(c.has_runs());
        assert_eq!(
            c.find_last(b"file-0000003", |_| true).unwrap().unwrap().1,
            again
        );
        let m = c.into_merged(None).unwrap();
        let mut want = wide(30_000, |i| i);
        want[3] = again;
        assert_eq!(m.bytes, tree(want));
    }

    #[test]
    fn a_sorted_listing_is_bisected() {
        let names: Vec<Vec<u8>> = (0..300u32)
            .map(|i| format!("n{:04}", i * 2).into_bytes())
            .collect();
        let nodes: Vec<Node> = names
            .iter()
            .enumerate()
            .map(|(i, n)| file(n, i as u64))
            .collect();
        let mut c = Children::from_nodes(&nodes).unwrap();
        assert!(c.sorted);
        for (i, n) in names.iter().enumerate() {
            assert_eq!(
                c.find_last(n, |_| true).unwrap().unwrap(),
                (i, nodes[i].clone())
            );
        }
        for absent in [&b"a"[..], b"n0001", b"n0599", b"z"] {
            assert!(c.find_last(absent, |_| true).unwrap().is_none());
        }
        assert!(c.find_last(&names[7], |n| n.size != 7).unwrap().is_none());
        // A removal unsorts the listing; lookups still see what is left.
        c.remove(7);
        assert!(c.find_last(&names[7], |_| true).unwrap().is_none());
        assert_eq!(c.find_last(&names[8], |_| true).unwrap().unwrap().0, 8);
    }

    #[test]
    fn find_and_remove() {
        let mut c = Children::from_nodes(&[
            file(b"x", 1),
            Node::new("d", NodeType::Dir),
            file(b"d", 2),
            file(b"y", 3),
        ])
        .unwrap();
        let (pos, n) = c.find_last(b"d", |_| true).unwrap().unwrap();
        assert_eq!((pos, n.size), (2, 2));
        let (pos, n) = c
            .find_last(b"d", |n| n.node_type == NodeType::Dir)
            .unwrap()
            .unwrap();
        assert_eq!((pos, n.node_type), (1, NodeType::Dir));
        c.remove(pos);
        assert!(c.find_last(b"zz", |_| true).unwrap().is_none());
        assert_eq!(c.find_last(b"y", |_| true).unwrap().unwrap().1.size, 3);
        // Positions stay valid after a removal.
        c.remove(3);
        let c = c.into_sorted().unwrap();
        assert_eq!(c.tree_bytes(), tree(vec![file(b"d", 2), file(b"x", 1)]));
    }
}
