//! Tests of `inode`.

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
