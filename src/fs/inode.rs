//! Inode numbers for S3 paths, with what was last learned about each object. A path keeps
//! its number while the kernel holds it or its directory's listing is kept (after that it
//! gets a new one, as after a remount); numbers are never reused.
//!
//! Memory follows the kernel's own cache: every entry handed to the kernel counts one
//! lookup, FORGET takes them back, and when the kernel forgets a directory its listing and
//! the children it no longer holds are dropped (a later lookup lists it again).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

// tokio's clock: the real one, which tests can pause and move (metadata TTL, retry window).
use tokio::time::Instant;

use super::types::Source;
use crate::store::{ObjectMeta, same_etag};

use super::types::{DirEntry, Kind, ROOT_INO};

pub struct Node {
    pub parent: u64,
    pub mtime: SystemTime,
    pub data: NodeData,
    /// Entries with this inode handed to the kernel and not yet forgotten by it.
    lookups: u64,
    /// No longer reachable by name (a newer version, or its directory was forgotten):
    /// dropped once the kernel forgets it.
    stale: bool,
}

impl Node {
    fn new(parent: u64, mtime: SystemTime, data: NodeData) -> Node {
        Node {
            parent,
            mtime,
            data,
            lookups: 0,
            stale: false,
        }
    }
}

pub enum NodeData {
    Dir {
        /// None only for the root when every bucket is shown.
        bucket: Option<String>,
        prefix: String,
        /// The last listing and when it was made; no time means it must be made again
        /// before use. It is kept until then so that the next one can tell what went.
        children: Option<(Option<Instant>, Arc<Vec<DirEntry>>)>,
    },
    File {
        bucket: String,
        key: String,
        meta: ObjectMeta,
        /// When `meta` was last confirmed by S3.
        learned: Instant,
        /// ETag of the version the kernel may still hold pages of.
        kernel_etag: Option<String>,
    },
}

/// An inode number for a name: the one it had, or a new one.
enum Numbered {
    Known(u64),
    New(u64),
}

pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_name: HashMap<(u64, String, Kind), u64>,
    next: u64,
    mounted_at: SystemTime,
}

impl InodeTable {
    pub fn new(source: &Source) -> InodeTable {
        let mounted_at = SystemTime::now();
        let (bucket, prefix) = match source {
            Source::AllBuckets => (None, String::new()),
            Source::Bucket { bucket, prefix } => (Some(bucket.clone()), prefix.clone()),
        };
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node::new(
                ROOT_INO,
                mounted_at,
                NodeData::Dir {
                    bucket,
                    prefix,
                    children: None,
                },
            ),
        );
        InodeTable {
            nodes,
            by_name: HashMap::new(),
            // 2 is the stats file.
            next: 3,
            mounted_at,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The inode `name` in `parent` has, or a new one.
    fn ino_for(&mut self, parent: u64, name: &str, kind: Kind) -> Numbered {
        let k = (parent, name.to_string(), kind);
        if let Some(ino) = self.by_name.get(&k) {
            return Numbered::Known(*ino);
        }
        let ino = self.next;
        self.next += 1;
        self.by_name.insert(k, ino);
        Numbered::New(ino)
    }

    pub fn dir_child(&mut self, parent: u64, name: &str, bucket: String, prefix: String) -> u64 {
        let ino = match self.ino_for(parent, name, Kind::Dir) {
            Numbered::Known(ino) => return ino,
            Numbered::New(ino) => ino,
        };
        self.nodes.insert(
            ino,
            Node::new(
                parent,
                self.mounted_at,
                NodeData::Dir {
                    bucket: Some(bucket),
                    prefix,
                    children: None,
                },
            ),
        );
        ino
    }

    /// The inode of a listed object. A different version (other ETag, size or
    /// modification time) gets a new inode: to the kernel it is a new file, as after an
    /// atomic replace on a local disk, so handles open on the old version keep their own
    /// pages and bytes.
    pub fn file_child(
        &mut self,
        parent: u64,
        name: &str,
        bucket: String,
        meta: ObjectMeta,
        learned: Instant,
    ) -> u64 {
        let ino = match self.ino_for(parent, name, Kind::File) {
            Numbered::New(ino) => ino,
            Numbered::Known(ino) => {
                return self.known_file(parent, name, ino, bucket, meta, learned);
            }
        };
        let key = meta.key.clone();
        self.nodes.insert(
            ino,
            Node::new(
                parent,
                self.mounted_at,
                NodeData::File {
                    bucket,
                    key,
                    meta,
                    learned,
                    kernel_etag: None,
                },
            ),
        );
        ino
    }

    /// A listed object whose name has an inode already: the same inode while it is the
    /// same version, else a new one.
    fn known_file(
        &mut self,
        parent: u64,
        name: &str,
        ino: u64,
        bucket: String,
        meta: ObjectMeta,
        learned: Instant,
    ) -> u64 {
        if let Some(Node {
            data:
                NodeData::File {
                    meta: old,
                    learned: old_learned,
                    ..
                },
            ..
        }) = self.nodes.get_mut(&ino)
        {
            // Two ETags decide; without both, the modification time does, when known
            // (a version an open found has none until it is listed).
            let changed = old.size != meta.size
                || match (&old.etag, &meta.etag) {
                    (Some(a), Some(b)) => !same_etag(a, b),
                    _ => old.last_modified.is_some() && old.last_modified != meta.last_modified,
                };
            if changed && *old_learned > learned {
                // S3 told an open about this version after the listing was asked
                // for: the listing is the older news.
                return ino;
            }
            if !changed {
                // Listings from some servers carry no ETag: keep the one we know, but
                // do not count it as confirmed now.
                if meta.etag.is_some() {
                    *old_learned = learned;
                    old.etag = meta.etag;
                }
                if meta.last_modified.is_some() {
                    old.last_modified = meta.last_modified;
                }
                return ino;
            }
        }
        self.unname(parent, name, Kind::File, ino);
        self.file_child(parent, name, bucket, meta, learned)
    }

    /// Whether `ino` is what its name in its directory stands for now (not retired).
    pub fn is_current(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| !n.stale)
    }

    /// The listing of `dir` if one started after `at` is already in.
    pub fn listing_after(&self, dir: u64, at: Instant) -> Option<Arc<Vec<DirEntry>>> {
        match &self.nodes.get(&dir)?.data {
            NodeData::Dir {
                children: Some((Some(t), entries)),
                ..
            } if *t > at => Some(entries.clone()),
            _ => None,
        }
    }

    /// The inode `name` in `dir` has now (a listing made meanwhile may have given it a new
    /// one).
    pub fn child_named(&self, dir: u64, name: &str, kind: Kind) -> Option<u64> {
        self.by_name.get(&(dir, name.to_string(), kind)).copied()
    }

    /// Number of inodes held.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `ino` was handed to the kernel in an entry (a lookup or a READDIRPLUS entry).
    pub fn looked_up(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// The kernel dropped `n` of its lookups of `ino`. When none are left, a stale node
    /// goes, and a directory drops its listing and the children nothing holds. Returns
    /// false if the kernel dropped more than were counted (a counting bug).
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return true;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return true;
        };
        let counted = node.lookups >= n;
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return counted;
        }
        if node.stale {
            self.retire(ino);
            return counted;
        }
        let listing = match &mut node.data {
            NodeData::Dir { children, .. } => children.take(),
            NodeData::File { .. } => None,
        };
        if let Some((_, entries)) = listing {
            self.drop_listing(ino, &entries);
        }
        counted
    }

    /// `entries` of `dir` are no longer listed: their names are free for new inodes.
    fn drop_listing(&mut self, dir: u64, entries: &[DirEntry]) {
        for e in entries {
            self.unname(dir, &e.name, e.kind, e.ino);
        }
    }

    /// `name` in `dir` no longer stands for `ino` (if it still did), and `ino` is retired.
    fn unname(&mut self, dir: u64, name: &str, kind: Kind, ino: u64) {
        let k = (dir, name.to_string(), kind);
        if self.by_name.get(&k) == Some(&ino) {
            self.by_name.remove(&k);
        }
        self.retire(ino);
    }

    /// `ino` can no longer be reached by name: dropped now if the kernel does not hold it,
    /// else when the kernel forgets it. A directory's listing goes with it.
    fn retire(&mut self, ino: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if node.lookups > 0 {
            node.stale = true;
            return;
        }
        if let Some(Node {
            data:
                NodeData::Dir {
                    children: Some((_, entries)),
                    ..
                },
            ..
        }) = self.nodes.remove(&ino)
        {
            self.drop_listing(ino, &entries);
        }
    }

    /// A new listing of `dir`. Entries of the last one that it no longer has (objects
    /// gone, older versions) are retired.
    pub fn set_children(&mut self, dir: u64, at: Instant, entries: Arc<Vec<DirEntry>>) {
        let Some(Node {
            data: NodeData::Dir { children, .. },
            ..
        }) = self.nodes.get_mut(&dir)
        else {
            // The directory went while it was being listed: nothing can reach these.
            self.drop_listing(dir, &entries);
            return;
        };
        let Some((_, old)) = children.replace((Some(at), entries.clone())) else {
            return;
        };
        let kept: HashSet<u64> = entries.iter().map(|e| e.ino).collect();
        let gone: Vec<DirEntry> = old
            .iter()
            .filter(|e| !kept.contains(&e.ino))
            .cloned()
            .collect();
        self.drop_listing(dir, &gone);
    }

    /// The object behind `ino` is gone: list its directory again next time.
    pub fn forget_listing_of(&mut self, ino: u64) {
        let Some(parent) = self.nodes.get(&ino).map(|n| n.parent) else {
            return;
        };
        if let Some(Node {
            data:
                NodeData::Dir {
                    children: Some((at, _)),
                    ..
                },
            ..
        }) = self.nodes.get_mut(&parent)
        {
            *at = None;
        }
    }

    /// An open, or a download ahead of use, found version `etag` (of `size` bytes) of the
    /// object behind `ino`; `confirmed` is when S3 said so (None: the open trusted what
    /// the table knew, or S3 could not be asked). Returns whether `ino` still stands for
    /// that version.
    ///
    /// Another version than the kernel was told about gets a new inode for the name, as a
    /// newer listing would give it, and `ino` is retired: the kernel holds `ino`'s size,
    /// pages and (with passthrough) backing file, which belong to the old version.
    pub fn found_version(
        &mut self,
        ino: u64,
        etag: &str,
        size: u64,
        confirmed: Option<Instant>,
    ) -> bool {
        let Some(Node {
            parent,
            stale: false,
            data:
                NodeData::File {
                    bucket,
                    key,
                    meta,
                    learned,
                    ..
                },
            ..
        }) = self.nodes.get_mut(&ino)
        else {
            return false;
        };
        let changed =
            meta.size != size || meta.etag.as_deref().is_some_and(|e| !same_etag(e, etag));
        if !changed {
            meta.etag = Some(etag.to_string());
            if let Some(at) = confirmed {
                *learned = at;
            }
            return true;
        }
        // Unconfirmed (the cached copy served while S3 could not be asked): no fresher
        // than what it replaces, so the next open asks S3 again.
        let learned = confirmed.unwrap_or(*learned);
        let (parent, bucket, key) = (*parent, bucket.clone(), key.clone());
        let name = key.rsplit('/').next().unwrap_or(&key).to_string();
        let meta = ObjectMeta {
            key: key.clone(),
            size,
            etag: Some(etag.to_string()),
            // Not known until the next listing; the node's time stands in (below).
            last_modified: None,
        };
        self.unname(parent, &name, Kind::File, ino);
        let new = self.file_child(parent, &name, bucket, meta, learned);
        if let Some(n) = self.nodes.get_mut(&new) {
            // Found just now: newer than the version it replaces, unlike the mount time.
            n.mtime = SystemTime::now();
        }
        // The directory's listing leads to the new inode too (read-ahead finds it there,
        // and forgetting the directory retires it).
        if let Some(Node {
            data:
                NodeData::Dir {
                    children: Some((_, entries)),
                    ..
                },
            ..
        }) = self.nodes.get_mut(&parent)
            && let Some(e) = Arc::make_mut(entries).iter_mut().find(|e| e.ino == ino)
        {
            e.ino = new;
        }
        false
    }

    /// Like `found_version`, for an inode the kernel keeps coming back to whatever the
    /// lookup says (see `S3Fs::refuse_stale`): it takes the version in place, as the
    /// only way the kernel will see it.
    pub fn adopt_version(&mut self, ino: u64, etag: &str, size: u64, confirmed: Option<Instant>) {
        if let Some(Node {
            data: NodeData::File { meta, learned, .. },
            ..
        }) = self.nodes.get_mut(&ino)
        {
            meta.size = size;
            meta.etag = Some(etag.to_string());
            if let Some(at) = confirmed {
                *learned = at;
            }
        }
    }

    /// Records that the kernel opened `ino` at version `etag`. Returns whether it may keep
    /// pages cached from earlier opens (same version, read from a complete local copy).
    pub fn note_opened(&mut self, ino: u64, etag: &str, cached: bool) -> bool {
        let Some(Node {
            data: NodeData::File { kernel_etag, .. },
            ..
        }) = self.nodes.get_mut(&ino)
        else {
            return false;
        };
        let keep = cached && kernel_etag.as_deref() == Some(etag);
        *kernel_etag = cached.then(|| etag.to_string());
        keep
    }
}

#[cfg(test)]
mod tests;
