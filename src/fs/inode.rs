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
mod tests {
    use super::*;

    fn meta(key: &str, etag: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 1,
            etag: Some(etag.into()),
            last_modified: None,
        }
    }

    fn table() -> InodeTable {
        InodeTable::new(&Source::Bucket {
            bucket: "b".into(),
            prefix: String::new(),
        })
    }

    /// Lists `names` as the files of `dir`, as a listing from S3 would.
    fn list(t: &mut InodeTable, dir: u64, names: &[(&str, &str)]) -> Vec<u64> {
        let now = Instant::now();
        let entries: Vec<DirEntry> = names
            .iter()
            .map(|(name, etag)| DirEntry {
                ino: t.file_child(dir, name, "b".into(), meta(name, etag), now),
                kind: Kind::File,
                name: name.to_string(),
            })
            .collect();
        let inos = entries.iter().map(|e| e.ino).collect();
        t.set_children(dir, now, Arc::new(entries));
        inos
    }

    #[test]
    fn forgetting_a_directory_drops_its_listing_and_the_children_nothing_holds() {
        let mut t = table();
        let dir = t.dir_child(ROOT_INO, "d", "b".into(), "d/".into());
        let files = list(&mut t, dir, &[("f1", "1"), ("f2", "1")]);
        t.looked_up(dir);
        t.looked_up(files[0]);
        t.forget(files[0], 1);
        assert!(
            t.get(files[0]).is_some(),
            "still in its directory's listing"
        );
        t.forget(dir, 1);
        assert!(t.get(dir).is_some(), "the root's way to it");
        assert!(t.get(files[0]).is_none() && t.get(files[1]).is_none());
        assert_eq!(t.len(), 2, "the root and the directory");
        let again = list(&mut t, dir, &[("f1", "1")]);
        assert!(
            !files.contains(&again[0]),
            "a new number: numbers are never reused"
        );
    }

    #[test]
    fn a_child_the_kernel_still_holds_goes_when_it_is_forgotten() {
        let mut t = table();
        let dir = t.dir_child(ROOT_INO, "d", "b".into(), "d/".into());
        let files = list(&mut t, dir, &[("f1", "1")]);
        t.looked_up(dir);
        t.looked_up(files[0]);
        t.looked_up(files[0]);
        t.forget(dir, 1);
        assert!(t.get(files[0]).is_some(), "held twice");
        t.forget(files[0], 1);
        assert!(t.get(files[0]).is_some(), "held once");
        t.forget(files[0], 1);
        assert!(t.get(files[0]).is_none());
    }

    #[test]
    fn an_older_version_goes_once_nothing_holds_it() {
        let mut t = table();
        let dir = t.dir_child(ROOT_INO, "d", "b".into(), "d/".into());
        let v1 = list(&mut t, dir, &[("held", "1"), ("unheld", "1")]);
        t.looked_up(v1[0]);
        let v2 = list(&mut t, dir, &[("held", "2"), ("unheld", "2")]);
        assert!(
            v2[0] != v1[0] && v2[1] != v1[1],
            "new versions, new numbers"
        );
        assert!(t.get(v1[1]).is_none(), "nothing held the old one");
        assert!(t.get(v1[0]).is_some(), "the kernel holds the old one");
        t.forget(v1[0], 1);
        assert!(t.get(v1[0]).is_none());
        assert!(t.get(v2[0]).is_some() && t.get(v2[1]).is_some());
    }

    #[test]
    fn a_new_listing_retires_the_objects_that_went() {
        let mut t = table();
        let dir = t.dir_child(ROOT_INO, "d", "b".into(), "d/".into());
        let first = list(&mut t, dir, &[("a", "1"), ("gone", "1")]);
        let second = list(&mut t, dir, &[("a", "1")]);
        assert_eq!(second[0], first[0], "unchanged: same number");
        assert!(t.get(first[1]).is_none());
        let back = list(&mut t, dir, &[("a", "1"), ("gone", "1")]);
        assert!(back[1] != first[1], "back again: a new number");
    }

    #[test]
    fn forgetting_more_than_was_counted_is_reported() {
        let mut t = table();
        let files = list(&mut t, ROOT_INO, &[("f", "1")]);
        t.looked_up(files[0]);
        assert!(t.forget(files[0], 1));
        t.looked_up(files[0]);
        assert!(!t.forget(files[0], 2));
    }

    fn learned_at(t: &InodeTable, ino: u64) -> Instant {
        match t.get(ino).map(|n| &n.data) {
            Some(NodeData::File { learned, .. }) => *learned,
            _ => panic!("no file {ino}"),
        }
    }

    #[test]
    fn the_same_version_found_by_an_open_is_trusted_longer_only_if_s3_said_so() {
        let mut t = table();
        let f = list(&mut t, ROOT_INO, &[("f", "1")])[0];
        let listed = learned_at(&t, f);
        assert!(t.found_version(f, "1", 1, None));
        assert_eq!(
            learned_at(&t, f),
            listed,
            "trusting what was known confirms nothing"
        );
        let now = Instant::now();
        assert!(t.found_version(f, "1", 1, Some(now)));
        assert_eq!(learned_at(&t, f), now);
    }

    #[test]
    fn another_version_found_by_an_open_gets_the_name_a_new_inode() {
        let mut t = table();
        let v1 = list(&mut t, ROOT_INO, &[("f", "1")])[0];
        t.looked_up(v1);
        assert!(!t.found_version(v1, "2", 1, Some(Instant::now())));
        assert!(
            !t.is_current(v1) && t.get(v1).is_some(),
            "kept while the kernel holds it"
        );
        let v2 = t.child_named(ROOT_INO, "f", Kind::File).expect("the name");
        assert_ne!(v2, v1);
        assert!(
            t.found_version(v2, "2", 1, None),
            "the new inode is that version"
        );
        assert!(
            !t.found_version(v1, "2", 1, None),
            "the old one is not current"
        );
        // The next listing (this one without ETags, as some servers give) keeps it.
        let now = Instant::now();
        let mut m = meta("f", "2");
        m.etag = None;
        m.last_modified = Some(SystemTime::now());
        assert_eq!(t.file_child(ROOT_INO, "f", "b".into(), m, now), v2);
        t.forget(v1, 1);
        assert!(t.get(v1).is_none());
    }

    #[test]
    fn a_version_found_by_an_open_takes_its_place_in_the_listing() {
        let mut t = table();
        let v1 = list(&mut t, ROOT_INO, &[("f", "1"), ("g", "1")])[0];
        let listed = learned_at(&t, v1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        // The cached copy served while S3 could not be asked: no fresher than before.
        assert!(!t.found_version(v1, "\"0\"", 1, None));
        let v0 = t.child_named(ROOT_INO, "f", Kind::File).expect("the name");
        assert_eq!(learned_at(&t, v0), listed);
        let Some(NodeData::Dir {
            children: Some((_, entries)),
            ..
        }) = t.get(ROOT_INO).map(|n| &n.data)
        else {
            panic!("root listing")
        };
        assert_eq!(entries[0].ino, v0, "the listing leads to the new inode");
        assert!(t.get(v0).is_some_and(|n| n.mtime > t.mounted_at));
        // Quoted or not, the same ETag is the same version.
        assert!(t.found_version(v0, "0", 1, None));
    }

    #[test]
    fn a_listing_older_than_what_an_open_learned_does_not_undo_it() {
        let mut t = table();
        let asked = Instant::now();
        let v1 = list(&mut t, ROOT_INO, &[("f", "1")])[0];
        assert!(!t.found_version(v1, "2", 1, Some(Instant::now())));
        let v2 = t.child_named(ROOT_INO, "f", Kind::File).expect("the name");
        // A listing asked for before that open's answer, still saying "1".
        let kept = t.file_child(ROOT_INO, "f", "b".into(), meta("f", "1"), asked);
        assert_eq!(kept, v2);
    }

    #[test]
    fn a_retired_version_is_not_current_and_its_name_leads_to_the_new_one() {
        let mut t = table();
        let v1 = list(&mut t, ROOT_INO, &[("f", "1")]);
        t.looked_up(v1[0]);
        let v2 = list(&mut t, ROOT_INO, &[("f", "2")]);
        assert!(t.get(v1[0]).is_some() && !t.is_current(v1[0]));
        assert!(t.is_current(v2[0]));
        assert_eq!(t.child_named(ROOT_INO, "f", Kind::File), Some(v2[0]));
    }

    #[test]
    fn a_listing_that_started_later_and_landed_first_is_the_newer_one() {
        let mut t = table();
        let started = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(1));
        list(&mut t, ROOT_INO, &[("f", "1")]);
        assert!(t.listing_after(ROOT_INO, started).is_some());
        assert!(t.listing_after(ROOT_INO, Instant::now()).is_none());
    }

    #[test]
    fn a_listing_of_a_directory_that_went_meanwhile_is_dropped() {
        let mut t = table();
        let dir = t.dir_child(ROOT_INO, "d", "b".into(), "d/".into());
        let d = DirEntry {
            ino: dir,
            kind: Kind::Dir,
            name: "d".into(),
        };
        t.set_children(ROOT_INO, Instant::now(), Arc::new(vec![d]));
        t.set_children(ROOT_INO, Instant::now(), Arc::new(Vec::new()));
        assert!(t.get(dir).is_none(), "gone from the root's listing");
        list(&mut t, dir, &[("f", "1")]);
        assert_eq!(t.len(), 1, "only the root");
    }

    #[test]
    fn the_root_and_its_listing_are_never_forgotten() {
        let mut t = table();
        let files = list(&mut t, ROOT_INO, &[("f", "1")]);
        t.forget(ROOT_INO, 1);
        t.forget(12345, 1);
        assert!(t.get(ROOT_INO).is_some() && t.get(files[0]).is_some());
    }
}
