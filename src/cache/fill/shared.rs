//! The shared tier's side of a fill: a part is landed from the tier's block, a verified
//! piece (64 KiB) at a time, as far as the block goes; the origin takes the rest (see `run_part`).
//! After the fill verifies, the parts that came wholly from the origin are shared.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Fill, PartFrom, write_all_at};
use crate::cache::shared::{BlockReader, Miss, OpenFile, UploadJob};
use crate::store::metrics::SHARED;

impl Fill {
    /// Lands part `i` from the shared tier (from `reader` when its GET is already open)
    /// and returns where the origin must take over (the part's end when the whole block
    /// came and checked out, its start when the tier had nothing), and whether the
    /// tier's block turned out corrupt (it has been deleted: this part replaces it).
    pub(super) async fn land_shared(&self, i: usize, reader: Option<BlockReader>) -> (u64, bool) {
        let part = self.part_range(i);
        let Some(b) = &self.blocks else {
            return (part.start, false);
        };
        let mut r = match reader {
            Some(r) => r,
            None => match b.tier.open_block(&b.version, i as u64).await {
                Ok(r) => r,
                Err(m) => return (part.start, matches!(m, Miss::Corrupt)),
            },
        };
        let mut pos = part.start;
        loop {
            let (at, bytes) = match r.next().await {
                Ok(Some(piece)) => piece,
                // The end of a block that checked out.
                Ok(None) => return (pos, false),
                // Counted and logged: the origin does the rest; all of it when the block
                // was corrupt, so no byte of it stays.
                Err(Miss::Corrupt) => return (part.start, true),
                Err(_) => return (pos, false),
            };
            let Some(file) = self.file() else {
                return (pos, false);
            };
            // A write that fails (a full disk) is met again, and reported, on the origin's.
            if at != pos || write_all_at(&file, &bytes, at).is_err() {
                return (pos, false);
            }
            let end = at + bytes.len() as u64;
            self.state.lock().landed.insert(at..end);
            if at == 0
                && let Some(asked) = self.cold_open.lock().take()
            {
                let m = &self.ctx.metrics;
                m.first_byte(&self.bucket, SHARED, asked.elapsed());
            }
            pos = end;
            b.tier
                .counters
                .bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            self.bump();
            if self.outcome().is_some() {
                return (pos, false);
            }
        }
    }

    /// Queues for upload every part that came wholly from the origin: call once the fill
    /// has verified. `open` opens its cache file when an upload's turn comes.
    pub(crate) fn share_origin_parts(&self, open: OpenFile) {
        let Some(b) = &self.blocks else { return };
        let origin: Vec<(usize, bool)> = {
            let st = self.state.lock();
            st.from
                .iter()
                .enumerate()
                .filter(|(_, f)| matches!(f, PartFrom::Origin | PartFrom::Replace))
                .map(|(i, f)| (i, *f == PartFrom::Replace))
                .collect()
        };
        for (i, replace) in origin {
            b.tier.upload(UploadJob {
                version: b.version.clone(),
                part: i as u64,
                replace,
                open: Arc::clone(&open),
            });
        }
    }
}
