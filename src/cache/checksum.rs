//! Checksums of cache files: a CRC32 of the whole file and of each [`BLOCK_SIZE`] block
//! (kept in the index, checked on reads), and the MD5 a plain ETag carries (checked once,
//! when a download completes).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::db::BLOCK_SIZE;

/// A file's checksums: CRC32 of the whole and of each [`BLOCK_SIZE`] block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checksums {
    pub crc32: u32,
    pub blocks: Vec<u32>,
}

/// Builds [`Checksums`] from the bytes of a file in order, in pieces of any size.
#[derive(Default)]
pub(crate) struct ChecksumBuilder {
    whole: crc32fast::Hasher,
    block: crc32fast::Hasher,
    in_block: u64,
    blocks: Vec<u32>,
}

impl ChecksumBuilder {
    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        while !data.is_empty() {
            let take = ((BLOCK_SIZE - self.in_block) as usize).min(data.len());
            self.block.update(&data[..take]);
            self.in_block += take as u64;
            data = &data[take..];
            if self.in_block == BLOCK_SIZE {
                let done = std::mem::take(&mut self.block);
                self.blocks.push(done.finalize());
                self.in_block = 0;
            }
        }
    }

    pub(crate) fn finish(mut self) -> Checksums {
        if self.in_block > 0 {
            self.blocks.push(self.block.finalize());
        }
        Checksums {
            crc32: self.whole.finalize(),
            blocks: self.blocks,
        }
    }
}

/// The checksums of a complete file of `size` bytes (a cache file checked on first use).
pub(crate) fn checksum_file(file: &File, size: u64) -> std::io::Result<Checksums> {
    let mut sums = ChecksumBuilder::default();
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    let mut off = 0u64;
    loop {
        let n = file.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        sums.update(&buf[..n]);
        off += n as u64;
    }
    if off != size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "size changed",
        ));
    }
    Ok(sums.finish())
}

/// The CRC32 of each block, for checking reads: `data` is one whole block (shorter
/// only at the end of the file).
pub(crate) fn block_crc(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The MD5 in a single-part upload's ETag (`"<32 hex>"`); multipart ETags (`-N`) are not.
pub(crate) fn plain_md5(etag: &str) -> Option<String> {
    let t = etag.trim_matches('"').to_ascii_lowercase();
    (t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_md5_only_for_single_part_etags() {
        assert!(plain_md5("\"9e107d9d372bb6826bd81d3542a419d6\"").is_some());
        assert!(plain_md5("\"9e107d9d372bb6826bd81d3542a419d6-3\"").is_none());
        assert!(plain_md5("").is_none());
    }
}
