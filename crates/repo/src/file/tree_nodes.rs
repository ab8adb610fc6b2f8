//! A tree blob read one node at a time from its stored form, never whole as plaintext.
//!
//! A directory of a million entries is a tree blob of some 250 MB of JSON, but only about 40 MB
//! stored (zstd). Opened whole and decoded into a [`Tree`](super::Tree), it costs several times
//! the JSON. [`StoredTree`] keeps the blob as stored (decrypted, still compressed) and
//! [`NodeReader`] decompresses it as it goes, handing out each node's JSON in turn; a pass to
//! the end checks the blob's length and id, as opening a blob whole does.

use std::io::Read;

use bytes::{Buf, Bytes};

use crate::file::tree::{NodeHead, NodeType};
use crate::id::IdHasher;
use crate::{Error, Id, Result};

/// Bytes read from the blob at once.
const READ_BYTES: usize = 64 * 1024;

/// Trees with more plaintext than this (some 16,000 entries) are read a node at a time by a
/// backup's parent lookups and by walks of a snapshot; smaller ones are decoded whole.
pub const STREAM_FROM: u64 = 4 * 1024 * 1024;

/// What one pass over a stored tree found ([`StoredTree::survey`]).
#[derive(Debug, Default)]
pub struct Survey {
    /// Names never decrease from one node to the next (restic writes trees so).
    pub sorted: bool,
    /// Its subdirectories' trees, the first `max_subdirs`.
    pub subdirs: Vec<Id>,
}

/// A tree blob as stored: decrypted, still compressed when it was.
#[derive(Clone)]
pub struct StoredTree {
    /// The blob's id: SHA-256 of the plaintext.
    pub id: Id,
    payload: Bytes,
    /// Plaintext length when `payload` is compressed.
    uncompressed_length: Option<u32>,
    /// Where the blob is, for messages.
    what: String,
}

impl StoredTree {
    /// A tree blob's decrypted payload; `uncompressed_length` as the index gives it.
    pub fn new(id: Id, payload: Bytes, uncompressed_length: Option<u32>, what: String) -> Self {
        StoredTree {
            id,
            payload,
            uncompressed_length,
            what,
        }
    }

    /// Bytes held.
    pub fn stored_len(&self) -> usize {
        self.payload.len()
    }

    /// Bytes of the tree's plaintext (its JSON).
    pub fn plain_len(&self) -> usize {
        self.uncompressed_length
            .map_or(self.payload.len(), |n| n as usize)
    }

    /// A reader of the nodes from the first.
    pub fn nodes(&self) -> Result<NodeReader> {
        let src: Box<dyn Read + Send> = match self.uncompressed_length {
            Some(_) => Box::new(
                zstd::stream::read::Decoder::new(self.payload.clone().reader())
                    .map_err(|e| self.error(format!("cannot decompress: {e}")))?,
            ),
            None => Box::new(self.payload.clone().reader()),
        };
        Ok(NodeReader {
            src,
            buf: Vec::new(),
            start: 0,
            scan: Scan::default(),
            state: State::Head,
            hasher: IdHasher::new(),
            read: 0,
            tree: self.clone_meta(),
        })
    }

    /// Reads the tree through once, checking its length and id before anything in it is
    /// trusted: whether its names are in order, its subdirectories' trees, and each node
    /// shown to `each`.
    pub fn survey(&self, max_subdirs: usize, mut each: impl FnMut(&NodeHead)) -> Result<Survey> {
        let mut reader = self.nodes()?;
        let mut survey = Survey {
            sorted: true,
            subdirs: Vec::new(),
        };
        let mut last: Option<Vec<u8>> = None;
        while let Some(raw) = reader.next_node()? {
            let node: NodeHead = serde_json::from_slice(raw)
                .map_err(|e| self.error(format!("tree {}: invalid node: {e}", self.id.short())))?;
            each(&node);
            if node.node_type == NodeType::Dir && survey.subdirs.len() < max_subdirs {
                survey.subdirs.extend(node.subtree);
            }
            if last.as_ref().is_some_and(|l| *l > node.name) {
                survey.sorted = false;
            }
            last = Some(node.name);
        }
        Ok(survey)
    }

    fn clone_meta(&self) -> Meta {
        Meta {
            id: self.id,
            uncompressed_length: self.uncompressed_length,
            what: self.what.clone(),
        }
    }

    fn error(&self, msg: String) -> Error {
        Error::format(self.what.clone(), msg)
    }
}

/// What a reader reports against.
struct Meta {
    id: Id,
    uncompressed_length: Option<u32>,
    what: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before `{"nodes":[`.
    Head,
    /// Before a node or the closing `]`.
    Element { first: bool },
    /// After the array.
    Done,
}

/// Where the scan of the current node is (it may need more bytes).
#[derive(Default, Clone, Copy)]
struct Scan {
    pos: usize,
    depth: u32,
    in_string: bool,
    escape: bool,
}

/// Hands out a tree blob's nodes as their JSON, in order; see the module docs.
pub struct NodeReader {
    src: Box<dyn Read + Send>,
    buf: Vec<u8>,
    /// Start of what is not handed out yet.
    start: usize,
    scan: Scan,
    state: State,
    hasher: IdHasher,
    read: u64,
    tree: Meta,
}

impl NodeReader {
    /// The next node's JSON, or `None` after the last. A tree blob not laid out as restic
    /// writes one (`{"nodes":[...]}`, whitespace allowed) is an error: read it whole instead.
    pub fn next_node(&mut self) -> Result<Option<&[u8]>> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Head => {
                    self.skip_ws()?;
                    for want in [&b"{"[..], b"\"nodes\"", b":", b"["] {
                        self.skip_ws()?;
                        self.expect(want)?;
                    }
                    self.state = State::Element { first: true };
                }
                State::Element { first } => {
                    self.skip_ws()?;
                    match self.peek()? {
                        Some(b']') => {
                            self.start += 1;
                            self.skip_ws()?;
                            self.expect(b"}")?;
                            self.finish()?;
                            self.state = State::Done;
                        }
                        Some(b',') if !first => {
                            self.start += 1;
                            self.skip_ws()?;
                            return self.element().map(Some);
                        }
                        Some(b'{') if first => return self.element().map(Some),
                        _ => return Err(self.error("not a restic tree layout")),
                    }
                }
            }
        }
    }

    /// Reads to the end and checks the blob's length and id: call after the last node.
    fn finish(&mut self) -> Result<()> {
        self.skip_ws()?;
        if self.start < self.buf.len() || self.fill()? {
            return Err(self.error("data after the tree"));
        }
        if let Some(n) = self.tree.uncompressed_length {
            if self.read != u64::from(n) {
                return Err(self.error(&format!(
                    "decompressed to {} bytes, the index says {n}",
                    self.read
                )));
            }
        }
        let hasher = std::mem::take(&mut self.hasher);
        if hasher.finish() != self.tree.id {
            return Err(self.error("blob content does not match its id"));
        }
        Ok(())
    }

    /// The node starting at `start` (a `{`), read to its matching `}`.
    fn element(&mut self) -> Result<&[u8]> {
        self.state = State::Element { first: false };
        if self.peek()? != Some(b'{') {
            return Err(self.error("a node that is not an object"));
        }
        self.scan = Scan {
            pos: self.start,
            ..Scan::default()
        };
        loop {
            while self.scan.pos < self.buf.len() {
                let b = self.buf[self.scan.pos];
                self.scan.pos += 1;
                let s = &mut self.scan;
                if s.in_string {
                    if s.escape {
                        s.escape = false;
                    } else if b == b'\\' {
                        s.escape = true;
                    } else if b == b'"' {
                        s.in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => s.in_string = true,
                    b'{' | b'[' => s.depth += 1,
                    b'}' | b']' => {
                        s.depth -= 1;
                        if s.depth == 0 {
                            let (from, to) = (self.start, self.scan.pos);
                            self.start = to;
                            return Ok(&self.buf[from..to]);
                        }
                    }
                    _ => {}
                }
            }
            if !self.fill()? {
                return Err(self.error("truncated node"));
            }
        }
    }

    fn peek(&mut self) -> Result<Option<u8>> {
        if self.start >= self.buf.len() && !self.fill()? {
            return Ok(None);
        }
        Ok(Some(self.buf[self.start]))
    }

    fn skip_ws(&mut self) -> Result<()> {
        while let Some(b) = self.peek()? {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.start += 1;
        }
        Ok(())
    }

    fn expect(&mut self, want: &[u8]) -> Result<()> {
        for &w in want {
            if self.peek()? != Some(w) {
                return Err(self.error("not a restic tree layout"));
            }
            self.start += 1;
        }
        Ok(())
    }

    /// Reads more bytes, dropping what was handed out; false at the end of the blob.
    fn fill(&mut self) -> Result<bool> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scan.pos -= self.start.min(self.scan.pos);
            self.start = 0;
        }
        let len = self.buf.len();
        let got = super::read_more(&mut self.src, &mut self.buf, READ_BYTES)
            .map_err(|e| self.error(&format!("cannot decompress: {e}")))?;
        self.hasher.update(&self.buf[len..]);
        self.read += got as u64;
        Ok(got > 0)
    }

    fn error(&self, msg: &str) -> Error {
        Error::format(
            self.tree.what.clone(),
            format!("tree {}: {msg}", self.tree.id.short()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::tree::{Node, NodeType, Tree};

    fn tree(n: usize) -> Vec<u8> {
        let nodes = (0..n)
            .map(|i| {
                let mut node = Node::new(format!("n{i:06} \"q\" {{x}}"), NodeType::File);
                node.size = i as u64;
                node
            })
            .collect();
        Tree { nodes }.to_bytes().unwrap()
    }

    fn stored(plain: &[u8], compress: bool) -> StoredTree {
        let id = Id::hash(plain);
        match compress {
            true => StoredTree::new(
                id,
                Bytes::from(zstd::bulk::compress(plain, 3).unwrap()),
                Some(plain.len() as u32),
                "test".into(),
            ),
            false => StoredTree::new(id, Bytes::copy_from_slice(plain), None, "test".into()),
        }
    }

    fn all(t: &StoredTree) -> Result<Vec<Node>> {
        let mut r = t.nodes()?;
        let mut out = Vec::new();
        while let Some(raw) = r.next_node()? {
            out.push(serde_json::from_slice(raw).map_err(|e| Error::format("node", e))?);
        }
        Ok(out)
    }

    #[test]
    fn nodes_come_one_by_one_as_the_whole_tree_has_them() {
        for n in [0, 1, 2, 5_000] {
            let plain = tree(n);
            let whole: Tree = serde_json::from_slice(&plain).unwrap();
            for compress in [false, true] {
                assert_eq!(all(&stored(&plain, compress)).unwrap(), whole.nodes, "{n}");
            }
        }
        // Whitespace as another writer may put it.
        let spaced = b" { \"nodes\" : [ {\"name\":\"a\",\"type\":\"file\"} ,\n{\"name\":\"b\",\"type\":\"dir\"} ] }\n";
        let got = all(&stored(spaced, true)).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].node_type, NodeType::Dir);
    }

    #[test]
    fn a_survey_finds_order_and_subdirectories() {
        let dir = |name: &str| {
            let mut n = Node::new(name, NodeType::Dir);
            n.subtree = Some(Id::hash(name.as_bytes()));
            n
        };
        let file = |name: &str| Node::new(name, NodeType::File);
        let sorted = vec![dir("a"), file("b"), dir("c"), dir("d")];
        let bytes = Tree { nodes: sorted }.to_bytes().unwrap();
        let mut names = Vec::new();
        let s = stored(&bytes, true)
            .survey(2, |n| names.push(n.name.clone()))
            .unwrap();
        assert!(s.sorted);
        assert_eq!(s.subdirs, vec![Id::hash(b"a"), Id::hash(b"c")]);
        assert_eq!(names, [b"a", b"b", b"c", b"d"]);
        let unsorted = Tree {
            nodes: vec![file("b"), file("a")],
        }
        .to_bytes()
        .unwrap();
        assert!(!stored(&unsorted, false).survey(9, |_| {}).unwrap().sorted);
    }

    #[test]
    fn a_tree_that_is_not_what_its_id_or_length_says_is_refused() {
        let plain = tree(100);
        let mut t = stored(&plain, true);
        t.id = Id::hash(b"something else");
        assert!(all(&t)
            .unwrap_err()
            .to_string()
            .contains("does not match its id"));
        let mut t = stored(&plain, true);
        t.uncompressed_length = Some(plain.len() as u32 + 1);
        assert!(all(&t).unwrap_err().to_string().contains("the index says"));
        // Truncated, trailing data, another layout: errors, never a short list.
        for bad in [
            &plain[..plain.len() / 2],
            b"{\"nodes\":[{\"name\":\"a\",\"type\":\"file\"}]}x".as_slice(),
            b"{\"other\":1,\"nodes\":[]}".as_slice(),
            b"{\"nodes\":[1]}".as_slice(),
            b"{\"nodes\":[{}{}]}".as_slice(),
        ] {
            assert!(
                all(&stored(bad, false)).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
