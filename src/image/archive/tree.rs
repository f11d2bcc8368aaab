//! Every name the archive used, as a tree of path components: to refuse
//! duplicates and entries below non-directories, and to resolve the paths
//! the manifest names (through symlinks and hard links) to the files that
//! were actually streamed. Memory is bounded by a byte budget on names.

use std::collections::HashMap;

/// Longest symlink chain followed when resolving a path.
const MAX_SYMLINK_HOPS: usize = 8;
/// What one node costs beyond its name, roughly (node, map slot, box).
const NODE_OVERHEAD: u64 = 64;

/// What a name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NodeKind {
    Dir,
    /// A regular file (or a hard link to one): an index into the caller's
    /// list of files.
    File(usize),
    /// A symlink, with its target resolved against its directory.
    Symlink(Box<str>),
}

#[derive(Debug)]
struct Node {
    kind: NodeKind,
    children: HashMap<Box<str>, usize>,
}

/// Why a name could not be added.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum InsertError {
    Duplicate,
    /// The ancestor with this many components is not a directory.
    NotADirectory(usize),
    /// The names held so far exceed the budget.
    OverBudget,
}

/// The tree of names.
#[derive(Debug)]
pub(super) struct Table {
    nodes: Vec<Node>,
    used: u64,
    budget: u64,
}

impl Table {
    /// An empty tree that may hold about `budget` bytes of names.
    pub fn new(budget: u64) -> Self {
        Table { nodes: vec![Node { kind: NodeKind::Dir, children: HashMap::new() }], used: 0, budget }
    }

    /// Charges `bytes` of memory kept for the archive (names, link targets).
    pub fn charge(&mut self, bytes: u64) -> Result<(), InsertError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.budget { Err(InsertError::OverBudget) } else { Ok(()) }
    }

    /// The node at a path, if any (no links followed).
    pub fn lookup<'a>(&self, comps: impl Iterator<Item = &'a str>) -> Option<&NodeKind> {
        let mut cur = 0;
        for c in comps {
            if c.is_empty() || c == "." {
                continue;
            }
            cur = *self.nodes.get(cur)?.children.get(c)?;
        }
        self.nodes.get(cur).map(|n| &n.kind)
    }

    /// Adds a name; directories may repeat, anything else only once.
    pub fn insert(&mut self, comps: &[&str], kind: NodeKind) -> Result<(), InsertError> {
        let Some((leaf, parents)) = comps.split_last() else {
            return Err(InsertError::Duplicate);
        };
        let mut cur = 0;
        for (depth, c) in parents.iter().enumerate() {
            cur = match self.nodes[cur].children.get(*c) {
                Some(&id) => {
                    if self.nodes[id].kind != NodeKind::Dir {
                        return Err(InsertError::NotADirectory(depth + 1));
                    }
                    id
                }
                None => self.add_child(cur, c, NodeKind::Dir)?,
            };
        }
        match self.nodes[cur].children.get(*leaf) {
            Some(&id) if kind == NodeKind::Dir && self.nodes[id].kind == NodeKind::Dir => Ok(()),
            Some(_) => Err(InsertError::Duplicate),
            None => self.add_child(cur, leaf, kind).map(|_| ()),
        }
    }

    fn add_child(&mut self, parent: usize, name: &str, kind: NodeKind) -> Result<usize, InsertError> {
        self.charge(NODE_OVERHEAD + name.len() as u64)?;
        let id = self.nodes.len();
        self.nodes.push(Node { kind, children: HashMap::new() });
        self.nodes[parent].children.insert(name.into(), id);
        Ok(id)
    }

    /// Follows symlinks from `path` to a regular file; its index.
    pub fn resolve_file(&self, path: &str) -> Option<usize> {
        let mut path = path.to_string();
        for _ in 0..=MAX_SYMLINK_HOPS {
            match self.lookup(path.split('/'))? {
                NodeKind::File(i) => return Some(*i),
                NodeKind::Symlink(target) => path = target.to_string(),
                NodeKind::Dir => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_links_and_budget() {
        let mut t = Table::new(10_000);
        t.insert(&["a", "layer.tar"], NodeKind::File(0)).unwrap();
        t.insert(&["a"], NodeKind::Dir).unwrap();
        assert_eq!(t.insert(&["a", "layer.tar"], NodeKind::File(1)), Err(InsertError::Duplicate));
        assert_eq!(t.insert(&["a", "layer.tar", "x"], NodeKind::Dir), Err(InsertError::NotADirectory(2)));
        t.insert(&["b", "layer.tar"], NodeKind::Symlink("a/layer.tar".into())).unwrap();
        t.insert(&["c"], NodeKind::Symlink("b/layer.tar".into())).unwrap();
        assert_eq!(t.resolve_file("c"), Some(0));
        assert_eq!(t.resolve_file("a"), None);
        t.insert(&["loop"], NodeKind::Symlink("loop".into())).unwrap();
        assert_eq!(t.resolve_file("loop"), None);

        let mut small = Table::new(200);
        small.insert(&["x"], NodeKind::File(0)).unwrap();
        assert_eq!(small.insert(&["y".repeat(300).as_str()], NodeKind::File(1)), Err(InsertError::OverBudget));
    }
}
