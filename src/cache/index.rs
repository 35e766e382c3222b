//! The in-memory view of the cache: entries in LRU order with their size and count
//! limits. Pure logic (no I/O), so the rules are tested on their own; `db.rs` persists it.

use lru::LruCache;

use super::key::CacheKey;

/// What the cache knows of one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub etag: String,
    pub size: u64,
    pub created_ms: u64,
    pub last_access_ms: u64,
    /// Position in LRU order; persisted so a restart keeps the order.
    pub seq: u64,
    pub hits: u64,
    pub crc32: u32,
    /// The file's [`Stamp`] (as a hash) when its checksum was last found right during
    /// this process's life; 0: not checked yet. Not persisted: a restart re-checks each
    /// file on first use, and a file touched since its check (another stamp) is checked
    /// again before it is handed out, so corruption on disk is never served.
    pub checked: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object of {size} bytes exceeds the cache's size limit of {max} bytes")]
pub struct TooLarge {
    pub size: u64,
    pub max: u64,
}

/// Why an object cannot have room in the cache now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// Larger than the size limit (or than what the disk can take).
    TooLarge(TooLarge),
    /// Only room held by downloads under way is left.
    Held,
}

#[derive(Debug)]
pub struct Index {
    lru: LruCache<CacheKey, Entry>,
    total_size: u64,
    max_size: u64,
    /// The most the disk can hold for the cache now (see `Disk::disk_cap`), when it is
    /// less than `max_size`.
    disk_cap: Option<u64>,
    max_entries: u64,
    next_seq: u64,
    /// Room held for downloads under way, so files being filled count against the
    /// limits too and the disk never holds more than them.
    reserved_size: u64,
    reserved_entries: u64,
}

impl Index {
    pub fn new(max_size: u64, max_entries: u64) -> Index {
        Index {
            lru: LruCache::unbounded(),
            total_size: 0,
            max_size,
            disk_cap: None,
            max_entries,
            next_seq: 1,
            reserved_size: 0,
            reserved_entries: 0,
        }
    }

    /// Builds the index from persisted rows in any order; `seq` restores the LRU order.
    pub fn from_entries(
        max_size: u64,
        max_entries: u64,
        mut rows: Vec<(CacheKey, Entry)>,
    ) -> Index {
        rows.sort_by_key(|(_, e)| e.seq);
        let mut index = Index::new(max_size, max_entries);
        for (k, e) in rows {
            // Saturating: the rows come from a file on disk, which may be damaged.
            index.next_seq = index.next_seq.max(e.seq.saturating_add(1));
            index.total_size = index.total_size.saturating_add(e.size);
            if let Some(old) = index.lru.put(k, e) {
                index.total_size = index.total_size.saturating_sub(old.size);
            }
        }
        index
    }

    pub fn len(&self) -> u64 {
        self.lru.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// The size limit in force: the configured one, or less when the disk has less room.
    pub fn size_limit(&self) -> u64 {
        self.disk_cap
            .map_or(self.max_size, |c| c.min(self.max_size))
    }

    /// Sets what the disk can hold for the cache now (`None`: no limit beyond the
    /// configured one).
    pub fn set_disk_cap(&mut self, cap: Option<u64>) {
        self.disk_cap = cap;
    }

    /// Bytes held for downloads under way.
    pub fn reserved_size(&self) -> u64 {
        self.reserved_size
    }

    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }

    pub fn peek(&self, k: &CacheKey) -> Option<&Entry> {
        self.lru.peek(k)
    }

    pub fn contains(&self, k: &CacheKey) -> bool {
        self.lru.contains(k)
    }

    /// Marks a use: most recently used now.
    pub fn touch(&mut self, k: &CacheKey, now_ms: u64) -> Option<&Entry> {
        let seq = self.next_seq;
        let e = self.lru.get_mut(k)?;
        self.next_seq += 1;
        e.seq = seq;
        e.last_access_ms = now_ms;
        e.hits += 1;
        Some(e)
    }

    /// Records that `k`'s file, as stamped `checked`, matched its checksum.
    pub fn set_checked(&mut self, k: &CacheKey, checked: u64) {
        if let Some(e) = self.lru.peek_mut(k) {
            e.checked = checked;
        }
    }

    /// Puts `k` at the least recently used end (an entry adopted from a file on disk
    /// comes after everything used since).
    pub fn demote(&mut self, k: &CacheKey) {
        self.lru.demote(k);
    }

    pub fn remove(&mut self, k: &CacheKey) -> Option<Entry> {
        let e = self.lru.pop(k)?;
        self.total_size -= e.size;
        Some(e)
    }

    /// The least recently used entries that must go so that an object of `size` bytes
    /// stored under `k` fits both limits. An existing entry under `k` is being replaced, so
    /// it is neither counted nor chosen.
    pub fn victims_for(&self, k: &CacheKey, size: u64) -> Result<Vec<CacheKey>, NoRoom> {
        let max_size = self.size_limit();
        if size > max_size || self.max_entries == 0 {
            return Err(NoRoom::TooLarge(TooLarge {
                size,
                max: max_size,
            }));
        }
        let (mut bytes, mut count) = (
            self.total_size + self.reserved_size,
            self.len() + self.reserved_entries,
        );
        if let Some(old) = self.lru.peek(k) {
            bytes -= old.size;
            count -= 1;
        }
        let mut victims = Vec::new();
        for (vk, ve) in self.lru.iter().rev() {
            if bytes + size <= max_size && count < self.max_entries {
                break;
            }
            if vk == k {
                continue;
            }
            bytes -= ve.size;
            count -= 1;
            victims.push(*vk);
        }
        if bytes + size > max_size || count >= self.max_entries {
            return Err(NoRoom::Held);
        }
        Ok(victims)
    }

    /// The LRU position the next insert or use will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Holds room for a download of `size` bytes (after its victims are removed).
    pub fn reserve(&mut self, size: u64) {
        self.reserved_size += size;
        self.reserved_entries += 1;
    }

    /// Gives back room held by [`Index::reserve`].
    pub fn unreserve(&mut self, size: u64) {
        self.reserved_size = self.reserved_size.saturating_sub(size);
        self.reserved_entries = self.reserved_entries.saturating_sub(1);
    }

    /// Adds (or replaces) an entry as the most recently used. Call after removing the
    /// victims from [`Index::victims_for`].
    pub fn insert(&mut self, k: CacheKey, mut e: Entry) -> &Entry {
        e.seq = self.next_seq;
        self.next_seq += 1;
        self.remove(&k);
        self.total_size += e.size;
        self.lru.put(k, e);
        self.lru.peek(&k).expect("just inserted")
    }

    /// Keys whose entries were created more than `ttl_ms` ago.
    pub fn expired(&self, now_ms: u64, ttl_ms: u64) -> Vec<CacheKey> {
        self.lru
            .iter()
            .filter(|(_, e)| is_expired(e, now_ms, ttl_ms))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Keys from least to most recently used.
    pub fn keys_lru_first(&self) -> Vec<CacheKey> {
        self.lru.iter().rev().map(|(k, _)| *k).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&CacheKey, &Entry)> {
        self.lru.iter()
    }
}

pub fn is_expired(e: &Entry, now_ms: u64, ttl_ms: u64) -> bool {
    now_ms.saturating_sub(e.created_ms) >= ttl_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> CacheKey {
        CacheKey::new("b", &format!("k{i}"), "default")
    }

    fn entry(size: u64, created_ms: u64) -> Entry {
        Entry {
            etag: "\"e\"".into(),
            size,
            created_ms,
            last_access_ms: created_ms,
            seq: 0,
            hits: 0,
            crc32: 0,
            checked: 1,
        }
    }

    fn insert(ix: &mut Index, k: CacheKey, size: u64) -> Vec<CacheKey> {
        let victims = ix.victims_for(&k, size).expect("fits");
        for v in &victims {
            ix.remove(v);
        }
        ix.insert(k, entry(size, 0));
        victims
    }

    #[test]
    fn entry_limit_keeps_most_recently_used() {
        let mut ix = Index::new(u64::MAX, 200);
        for i in 0..300 {
            insert(&mut ix, key(i), 1);
        }
        assert_eq!(ix.len(), 200);
        let expect: Vec<_> = (100..300).map(key).collect();
        assert_eq!(ix.keys_lru_first(), expect);
    }

    #[test]
    fn touch_moves_to_front_and_size_limit_evicts_lru() {
        let mut ix = Index::new(100, 1000);
        insert(&mut ix, key(1), 40);
        insert(&mut ix, key(2), 40);
        ix.touch(&key(1), 5);
        let victims = insert(&mut ix, key(3), 40);
        assert_eq!(victims, vec![key(2)]);
        assert_eq!(ix.total_size(), 80);
        assert_eq!(ix.keys_lru_first(), vec![key(1), key(3)]);
    }

    #[test]
    fn replacing_an_entry_does_not_evict_others_or_itself() {
        let mut ix = Index::new(100, 2);
        insert(&mut ix, key(1), 50);
        insert(&mut ix, key(2), 50);
        let victims = insert(&mut ix, key(1), 50);
        assert!(victims.is_empty());
        assert_eq!(ix.total_size(), 100);
        assert_eq!(ix.keys_lru_first(), vec![key(2), key(1)]);
    }

    #[test]
    fn reservations_count_against_the_limits() {
        let mut ix = Index::new(100, 3);
        insert(&mut ix, key(1), 40);
        insert(&mut ix, key(2), 40);
        ix.reserve(50);
        assert_eq!(ix.victims_for(&key(3), 10).expect("fits"), vec![key(1)]);
        // Room held by other downloads cannot be evicted: no room now.
        ix.reserve(60);
        assert!(ix.victims_for(&key(3), 10).is_err());
        ix.unreserve(60);
        ix.unreserve(50);
        assert_eq!(
            ix.victims_for(&key(3), 10).expect("fits"),
            Vec::<CacheKey>::new()
        );
    }

    #[test]
    fn too_large_is_refused() {
        let ix = Index::new(100, 10);
        assert_eq!(
            ix.victims_for(&key(1), 101),
            Err(NoRoom::TooLarge(TooLarge {
                size: 101,
                max: 100
            }))
        );
    }

    #[test]
    fn the_disk_cap_lowers_the_size_limit() {
        let mut ix = Index::new(100, 10);
        insert(&mut ix, key(1), 40);
        insert(&mut ix, key(2), 40);
        ix.set_disk_cap(Some(60));
        assert_eq!(ix.size_limit(), 60);
        assert_eq!(ix.victims_for(&key(3), 20).expect("fits"), vec![key(1)]);
        assert!(matches!(
            ix.victims_for(&key(3), 61),
            Err(NoRoom::TooLarge(_))
        ));
        ix.set_disk_cap(Some(1000));
        assert_eq!(ix.size_limit(), 100);
    }

    #[test]
    fn order_survives_rebuild_from_rows() {
        let mut ix = Index::new(1000, 1000);
        for i in 0..5 {
            insert(&mut ix, key(i), 1);
        }
        ix.touch(&key(0), 1);
        let rows: Vec<_> = ix.iter().map(|(k, e)| (*k, e.clone())).collect();
        let rebuilt = Index::from_entries(1000, 1000, rows);
        assert_eq!(rebuilt.keys_lru_first(), ix.keys_lru_first());
        assert_eq!(rebuilt.total_size(), 5);
    }

    #[test]
    fn expiry_is_by_creation_time() {
        let mut ix = Index::new(1000, 1000);
        ix.insert(key(1), entry(1, 0));
        ix.insert(key(2), entry(1, 500));
        assert_eq!(ix.expired(1000, 1000), vec![key(1)]);
        assert!(ix.expired(999, 1000).is_empty());
    }
}
