//! Bounding the shared tier (`s3cachefs shared gc`): lists its blocks, groups them by
//! object version, and deletes whole versions, least recently written first, until the
//! tier is within its size, along with every version older than the age limit.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::block::version_dir;
use crate::store::{ObjectMeta, ObjectStore, StoreError};

/// What to keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_size: Option<u64>,
    pub older_than: Option<Duration>,
}

/// What a collection did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Keys of the blocks to delete.
    pub delete: Vec<String>,
    pub versions_deleted: usize,
    pub bytes_deleted: u64,
    pub versions_kept: usize,
    pub bytes_kept: u64,
}

#[derive(Debug, Default)]
struct VersionBlocks {
    keys: Vec<String>,
    bytes: u64,
    last_written: Option<SystemTime>,
}

/// Chooses what to delete from a listing of the tier under `prefix`. Objects that are
/// not blocks (anything else under the prefix) are left alone.
pub fn plan(objects: &[ObjectMeta], prefix: &str, limits: Limits, now: SystemTime) -> Plan {
    let root = version_dir(prefix, "");
    let mut versions: BTreeMap<&str, VersionBlocks> = BTreeMap::new();
    for o in objects {
        let Some((id, part)) = o
            .key
            .strip_prefix(&root)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        if id.len() != 64 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let v = versions.entry(id).or_default();
        v.keys.push(o.key.clone());
        v.bytes += o.size;
        v.last_written = v.last_written.max(o.last_modified);
    }
    let mut order: Vec<VersionBlocks> = versions.into_values().collect();
    // Least recently written first; a version without dates counts as oldest.
    order.sort_by_key(|v| v.last_written);
    let cutoff = limits.older_than.and_then(|d| now.checked_sub(d));
    let mut kept: u64 = order.iter().map(|v| v.bytes).sum();
    let mut out = Plan::default();
    for v in order {
        let too_old = cutoff.is_some_and(|c| v.last_written.is_none_or(|w| w < c));
        let too_big = limits.max_size.is_some_and(|m| kept > m);
        if too_old || too_big {
            kept -= v.bytes;
            out.versions_deleted += 1;
            out.bytes_deleted += v.bytes;
            out.delete.extend(v.keys);
        } else {
            out.versions_kept += 1;
        }
    }
    out.bytes_kept = kept;
    out
}

/// Lists the tier, plans, and (unless `dry_run`) deletes.
pub async fn collect(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    limits: Limits,
    dry_run: bool,
) -> Result<Plan, StoreError> {
    let listing = store.list(bucket, &version_dir(prefix, ""), None).await?;
    let plan = plan(&listing.objects, prefix, limits, SystemTime::now());
    if !dry_run && !plan.delete.is_empty() {
        store.delete_objects(bucket, &plan.delete).await?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: char, part: u32, size: u64, days_ago: u64) -> ObjectMeta {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100 * 86_400);
        ObjectMeta {
            key: format!("p/s3cachefs/v1/{}/{part:06}", id.to_string().repeat(64)),
            size,
            etag: None,
            last_modified: Some(now - Duration::from_secs(days_ago * 86_400)),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(100 * 86_400)
    }

    #[test]
    fn whole_versions_go_least_recently_written_first_until_within_size() {
        let objs = vec![
            block('a', 0, 100, 5),
            block('a', 1, 100, 1), // a was last written 1 day ago
            block('b', 0, 150, 3),
            block('c', 0, 50, 2),
        ];
        let p = plan(
            &objs,
            "p",
            Limits {
                max_size: Some(260),
                older_than: None,
            },
            now(),
        );
        // b (3 days) goes first; then 250 <= 260.
        assert_eq!(p.versions_deleted, 1);
        assert_eq!(p.bytes_deleted, 150);
        assert_eq!(p.bytes_kept, 250);
        assert!(p.delete.iter().all(|k| k.contains("bbbb")));
        let p = plan(
            &objs,
            "p",
            Limits {
                max_size: Some(100),
                older_than: None,
            },
            now(),
        );
        // b, then c: a is 200 on its own, so it goes too (a version is never split).
        assert_eq!((p.versions_deleted, p.bytes_kept), (3, 0));
    }

    #[test]
    fn versions_older_than_the_limit_go_whatever_the_size() {
        let objs = vec![block('a', 0, 10, 5), block('b', 0, 10, 1)];
        let p = plan(
            &objs,
            "p",
            Limits {
                max_size: None,
                older_than: Some(Duration::from_secs(2 * 86_400)),
            },
            now(),
        );
        assert_eq!((p.versions_deleted, p.versions_kept), (1, 1));
        assert!(p.delete[0].contains("aaaa"));
    }

    #[test]
    fn other_objects_under_the_prefix_are_left_alone() {
        let mut objs = vec![block('a', 0, 10, 5)];
        objs.push(ObjectMeta {
            key: "p/s3cachefs/v1/notes.txt".into(),
            size: 1000,
            ..ObjectMeta::default()
        });
        objs.push(ObjectMeta {
            key: "p/s3cachefs/v1/probe-0011/x".into(),
            size: 1000,
            ..ObjectMeta::default()
        });
        let p = plan(
            &objs,
            "p",
            Limits {
                max_size: Some(0),
                older_than: None,
            },
            now(),
        );
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.bytes_kept, 0);
    }
}
