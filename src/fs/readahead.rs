//! Read-ahead across the files of a directory. A job that opens a directory's files one
//! after another in listing order (a training loop over shards, `cat dir/*`) waits a full
//! round trip per file; once two opens in a row are neighbours, the next few files are
//! fetched into the cache in the background, so later opens find them there. Pure logic:
//! which entries to fetch; the caller filters them (files, small enough) and fetches.

use std::collections::HashMap;
use std::ops::Range;

/// Directories tracked at once; more are forgotten (all at once: it is only a hint).
const MAX_DIRS: usize = 256;

pub struct DirReadahead {
    depth: usize,
    dirs: HashMap<u64, Track>,
}

struct Track {
    /// Position of the last entry opened.
    last: usize,
    /// Entries before this one were fetched ahead already.
    ahead_to: usize,
}

impl DirReadahead {
    /// `depth`: entries fetched ahead of a sequential reader; 0 turns read-ahead off.
    pub fn new(depth: usize) -> DirReadahead {
        DirReadahead {
            depth,
            dirs: HashMap::new(),
        }
    }

    /// Notes an open of the entry at `pos` of directory `dir` (which has `len` entries)
    /// and returns the positions to fetch now: none unless the previous open in `dir` was
    /// of the entry just before; never one returned before for the same run.
    pub fn opened(&mut self, dir: u64, pos: usize, len: usize) -> Range<usize> {
        if self.depth == 0 {
            return 0..0;
        }
        if self.dirs.len() >= MAX_DIRS && !self.dirs.contains_key(&dir) {
            self.dirs.clear();
        }
        let t = self.dirs.entry(dir).or_insert(Track {
            last: usize::MAX,
            ahead_to: 0,
        });
        let sequential = t.last.checked_add(1) == Some(pos);
        t.last = pos;
        if !sequential {
            t.ahead_to = pos + 1;
            return 0..0;
        }
        let start = t.ahead_to.max(pos + 1).min(len);
        let end = (pos + 1 + self.depth).min(len);
        t.ahead_to = t.ahead_to.max(end);
        start..end.max(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sequential_run_reads_ahead_and_each_entry_once() {
        let mut r = DirReadahead::new(4);
        assert_eq!(r.opened(7, 0, 100), 0..0, "one open is no pattern");
        assert_eq!(r.opened(7, 1, 100), 2..6);
        assert_eq!(r.opened(7, 2, 100), 6..7, "only the new one");
        assert_eq!(r.opened(7, 3, 100), 7..8);
        assert_eq!(r.opened(7, 50, 100), 0..0, "a jump ends the run");
        assert_eq!(r.opened(7, 51, 100), 52..56);
    }

    #[test]
    fn stops_at_the_end_and_keeps_directories_apart() {
        let mut r = DirReadahead::new(4);
        r.opened(1, 7, 10);
        assert_eq!(r.opened(1, 8, 10), 9..10);
        assert_eq!(r.opened(1, 9, 10), 10..10);
        r.opened(2, 0, 10);
        r.opened(1, 3, 10);
        assert_eq!(
            r.opened(2, 1, 10),
            2..6,
            "another directory's opens do not break the run"
        );
    }

    #[test]
    fn depth_zero_is_off() {
        let mut r = DirReadahead::new(0);
        r.opened(1, 0, 10);
        assert_eq!(r.opened(1, 1, 10), 0..0);
    }
}
