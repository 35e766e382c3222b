//! Inode numbers for S3 paths: stable for the life of the mount (a path keeps its number;
//! numbers are never reused), with what was last learned about each object.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::Source;
use crate::store::ObjectMeta;

use super::{DirEntry, ROOT_INO};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Attributes as the filesystem layer reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

pub struct Node {
    pub parent: u64,
    pub mtime: SystemTime,
    pub data: NodeData,
}

pub enum NodeData {
    Dir {
        /// None only for the root when every bucket is shown.
        bucket: Option<String>,
        prefix: String,
        children: Option<(Instant, Arc<Vec<DirEntry>>)>,
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

pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_name: HashMap<(u64, String, bool), u64>,
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
            Node {
                parent: ROOT_INO,
                mtime: mounted_at,
                data: NodeData::Dir {
                    bucket,
                    prefix,
                    children: None,
                },
            },
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

    fn ino_for(&mut self, parent: u64, name: &str, is_dir: bool) -> (u64, bool) {
        let k = (parent, name.to_string(), is_dir);
        if let Some(ino) = self.by_name.get(&k) {
            return (*ino, false);
        }
        let ino = self.next;
        self.next += 1;
        self.by_name.insert(k, ino);
        (ino, true)
    }

    pub fn dir_child(&mut self, parent: u64, name: &str, bucket: String, prefix: String) -> u64 {
        let (ino, new) = self.ino_for(parent, name, true);
        if new {
            self.nodes.insert(
                ino,
                Node {
                    parent,
                    mtime: self.mounted_at,
                    data: NodeData::Dir {
                        bucket: Some(bucket),
                        prefix,
                        children: None,
                    },
                },
            );
        }
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
        let (ino, new) = self.ino_for(parent, name, false);
        if !new {
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
                let changed = old.size != meta.size
                    || old.last_modified != meta.last_modified
                    || matches!((&old.etag, &meta.etag), (Some(a), Some(b)) if a != b);
                if !changed {
                    // Listings from some servers carry no ETag: keep the one we know, but
                    // do not count it as confirmed now.
                    if meta.etag.is_some() {
                        *old_learned = learned;
                        old.etag = meta.etag;
                    }
                    return ino;
                }
            }
            self.by_name.remove(&(parent, name.to_string(), false));
            return self.file_child(parent, name, bucket, meta, learned);
        }
        let key = meta.key.clone();
        self.nodes.insert(
            ino,
            Node {
                parent,
                mtime: self.mounted_at,
                data: NodeData::File {
                    bucket,
                    key,
                    meta,
                    learned,
                    kernel_etag: None,
                },
            },
        );
        ino
    }

    pub fn set_children(&mut self, dir: u64, at: Instant, entries: Arc<Vec<DirEntry>>) {
        if let Some(Node {
            data: NodeData::Dir { children, .. },
            ..
        }) = self.nodes.get_mut(&dir)
        {
            *children = Some((at, entries));
        }
    }

    /// The object behind `ino` is gone: list its directory again next time.
    pub fn forget_listing_of(&mut self, ino: u64) {
        let Some(parent) = self.nodes.get(&ino).map(|n| n.parent) else {
            return;
        };
        if let Some(Node {
            data: NodeData::Dir { children, .. },
            ..
        }) = self.nodes.get_mut(&parent)
        {
            *children = None;
        }
    }

    /// Records the version a download ahead of use found, so the open that follows
    /// trusts it like a listing's (no HEAD within the metadata TTL).
    pub fn note_version(&mut self, ino: u64, etag: &str, size: u64) {
        if let Some(Node {
            data: NodeData::File { meta, learned, .. },
            ..
        }) = self.nodes.get_mut(&ino)
        {
            meta.size = size;
            meta.etag = Some(etag.to_string());
            *learned = Instant::now();
        }
    }

    /// Records the version an open got. Returns whether the kernel may keep pages cached
    /// from earlier opens (same version, read from a complete local copy).
    pub fn note_opened(&mut self, ino: u64, etag: &str, size: u64, cached: bool) -> bool {
        let Some(Node {
            data:
                NodeData::File {
                    meta,
                    learned,
                    kernel_etag,
                    ..
                },
            ..
        }) = self.nodes.get_mut(&ino)
        else {
            return false;
        };
        meta.size = size;
        meta.etag = Some(etag.to_string());
        *learned = Instant::now();
        let keep = cached && kernel_etag.as_deref() == Some(etag);
        *kernel_etag = cached.then(|| etag.to_string());
        keep
    }
}
