//! The walk over every snapshot's trees: which blobs are in use, and which references are
//! broken. Each tree is loaded once however many snapshots share it; a few load at a time.

use std::collections::{HashMap, HashSet, VecDeque};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use snapback_repo::file::{NodeType, Tree};
use snapback_repo::{BlobLocation, BlobType, Id, Repository};

/// A broken reference found while walking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkProblem {
    /// The snapshot through which the problem was first reached.
    pub snapshot: Id,
    /// The tree concerned.
    pub tree: Id,
    /// What is wrong.
    pub message: String,
}

/// The blobs reachable from the snapshots.
#[derive(Debug, Default)]
pub struct UsedBlobs {
    /// Tree blobs.
    pub trees: HashSet<Id>,
    /// Data blobs.
    pub data: HashSet<Id>,
}

impl UsedBlobs {
    /// Whether blob `id` is used.
    pub fn contains(&self, id: &Id) -> bool {
        self.trees.contains(id) || self.data.contains(id)
    }
}

/// Walks the trees of `roots` (snapshot id, root tree id) with `workers` trees loading at once.
pub async fn walk(
    repo: &Repository,
    index: &HashMap<Id, BlobLocation>,
    roots: &[(Id, Id)],
    workers: usize,
) -> (UsedBlobs, Vec<WalkProblem>) {
    let mut used = UsedBlobs::default();
    let mut problems = Vec::new();
    let mut queue: VecDeque<(Id, Id)> = VecDeque::new();
    for &(snapshot, tree) in roots {
        if used.trees.insert(tree) {
            queue.push_back((snapshot, tree));
        }
    }
    let mut loading = FuturesUnordered::new();
    loop {
        while loading.len() < workers.max(1) {
            let Some((snapshot, tree)) = queue.pop_front() else {
                break;
            };
            loading.push(async move { (snapshot, tree, load_tree(repo, index, &tree).await) });
        }
        let Some((snapshot, tree_id, loaded)) = loading.next().await else {
            break;
        };
        let tree = match loaded {
            Ok(t) => t,
            Err(message) => {
                problems.push(WalkProblem {
                    snapshot,
                    tree: tree_id,
                    message,
                });
                continue;
            }
        };
        let mut problem = |message: String| {
            problems.push(WalkProblem {
                snapshot,
                tree: tree_id,
                message,
            })
        };
        for node in &tree.nodes {
            match node.node_type {
                NodeType::File => {
                    for blob in node.content.iter().flatten() {
                        if used.data.insert(*blob) {
                            match index.get(blob) {
                                None => problem(format!(
                                    "file {:?}: data blob {blob} is not in the index",
                                    node.name_lossy()
                                )),
                                Some(l) if l.ty != BlobType::Data => problem(format!(
                                    "file {:?}: blob {blob} is a tree, not data",
                                    node.name_lossy()
                                )),
                                Some(_) => {}
                            }
                        }
                    }
                }
                NodeType::Dir => match node.subtree {
                    Some(sub) => {
                        if used.trees.insert(sub) {
                            queue.push_back((snapshot, sub));
                        }
                    }
                    None => problem(format!("directory {:?} has no subtree", node.name_lossy())),
                },
                _ => {}
            }
        }
    }
    (used, problems)
}

async fn load_tree(
    repo: &Repository,
    index: &HashMap<Id, BlobLocation>,
    id: &Id,
) -> std::result::Result<Tree, String> {
    let loc = index
        .get(id)
        .ok_or_else(|| "tree blob is not in the index".to_string())?;
    if loc.ty != BlobType::Tree {
        return Err("the index lists this tree as a data blob".into());
    }
    let data = repo.load_blob(id, loc).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&data).map_err(|e| format!("tree does not parse: {e}"))
}
