//! The shared tier's block format: where a block lives and what it carries, so that a
//! block of another version, object or origin can never pass for the one wanted.
//!
//! A block is one part of a fill (`--part-size-mb`) of one object version, stored at
//! `PREFIX/s3cachefs/v1/<version id>/<part index, 6 digits>` where the version id is the
//! hex SHA-256 of (origin endpoint, bucket, key, ETag, part size). A new version has a
//! new ETag, so new keys. The object's body is:
//!
//! ```text
//! MAGIC (8 bytes) | header length (u32, little-endian) | header (JSON) | data
//! ```
//!
//! The header holds the block's metadata (format version, origin, bucket, key, ETag,
//! part index, offset, length, object size, the data's SHA-256 and one CRC32 per
//! [`CHUNK`] of it) and a SHA-256 over all of these. It travels in the body rather than
//! in S3 user metadata, which is capped at 2 KB (keys alone can be 1 KB). The per-chunk
//! CRCs let a reader land each piece as soon as it checks out instead of after the whole
//! block (the first byte waits for 64 KiB, not for 8 MiB). They are there for accidents
//! (bit rot, a cut or misplaced body), as all these checksums are: anyone who can write
//! the tier can write consistent ones. The body's SHA-256, sent with the PUT and asked
//! for by the GET, is checked by the SDK as the body ends; CRC32 per piece keeps the
//! reader from hashing every byte with SHA-256 twice.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What every block key starts with, after the tier's prefix.
pub const ROOT: &str = "s3cachefs/v1";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"S3CFBLK\x01";
/// Data is verified (and handed on) in pieces of this size: small enough that the first
/// read of a cold object waits for little more than the bytes it asked for.
pub const CHUNK: u64 = 64 << 10;
/// A header larger than this is not ours (a block of the largest part, 1 GiB, needs
/// ~1.1 MiB; of the default 8 MiB, ~9 KiB).
const MAX_HEADER: usize = 4 << 20;

/// One object version as the tier names it: every block of it shares this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub origin: String,
    pub bucket: String,
    pub key: String,
    /// Without quotes.
    pub etag: String,
    pub part_size: u64,
    pub object_size: u64,
}

impl Version {
    pub fn new(
        origin: &str,
        bucket: &str,
        key: &str,
        etag: &str,
        part_size: u64,
        object_size: u64,
    ) -> Version {
        Version {
            origin: origin.to_string(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: etag.trim_matches('"').to_string(),
            part_size,
            object_size,
        }
    }

    /// The hex SHA-256 naming this version's directory. Each field is length-prefixed,
    /// so no choice of key can make two versions share an id.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        for field in [
            self.origin.as_bytes(),
            self.bucket.as_bytes(),
            self.key.as_bytes(),
            self.etag.as_bytes(),
            self.part_size.to_string().as_bytes(),
        ] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field);
        }
        hex::encode(h.finalize())
    }

    /// The key of block `part` under the tier's `prefix` (empty, or without a trailing `/`).
    pub fn block_key(&self, prefix: &str, part: u64) -> String {
        format!("{}{}/{part:06}", version_dir(prefix, ""), self.id())
    }

    /// The byte range of block `part` within the object.
    pub fn part_range(&self, part: u64) -> std::ops::Range<u64> {
        let start = part * self.part_size;
        start..(start + self.part_size).min(self.object_size)
    }
}

/// `PREFIX/s3cachefs/v1/` followed by `id` (empty: the directory of all versions).
pub fn version_dir(prefix: &str, id: &str) -> String {
    if prefix.is_empty() {
        format!("{ROOT}/{id}")
    } else {
        format!("{prefix}/{ROOT}/{id}")
    }
}

/// What a block says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    format: u32,
    origin: String,
    bucket: String,
    key: String,
    etag: String,
    part_size: u64,
    part: u64,
    offset: u64,
    length: u64,
    object_size: u64,
    sha256: String,
    chunk_crc32: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    meta: Meta,
    /// SHA-256 of `meta` as serialized here.
    check: String,
}

fn check_of(meta: &Meta) -> String {
    // serde_json writes a struct's fields in declaration order: the same bytes every time.
    let bytes = serde_json::to_vec(meta).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// Writes the whole body of block `part` of `v` into `out` (its allocation is reused),
/// reading the part's bytes with `read_at(buf, offset in the part)` twice: once for the
/// digests, once into the body, so that the only buffer the size of a part is `out`.
pub fn encode_into(
    v: &Version,
    part: u64,
    out: &mut Vec<u8>,
    mut read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let range = v.part_range(part);
    let len = range.end - range.start;
    let mut piece = vec![0u8; CHUNK.min(len) as usize];
    let (mut whole, mut digests, mut at) = (Sha256::new(), Vec::new(), 0u64);
    while at < len {
        let n = CHUNK.min(len - at) as usize;
        read_at(&mut piece[..n], at)?;
        whole.update(&piece[..n]);
        digests.push(crc32fast::hash(&piece[..n]));
        at += n as u64;
    }
    let header = header_bytes(v, part, len, hex::encode(whole.finalize()), digests.clone());
    out.clear();
    out.reserve(12 + header.len() + len as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    let start = out.len();
    out.resize(start + len as usize, 0);
    read_at(&mut out[start..], 0)?;
    // The bytes read the second time must be those hashed the first.
    let again = out[start..].chunks(CHUNK as usize).map(crc32fast::hash);
    if !again.eq(digests) {
        return Err(std::io::Error::other("the file changed while it was read"));
    }
    Ok(())
}

fn header_bytes(v: &Version, part: u64, len: u64, sha256: String, digests: Vec<u32>) -> Vec<u8> {
    let meta = Meta {
        format: FORMAT,
        origin: v.origin.clone(),
        bucket: v.bucket.clone(),
        key: v.key.clone(),
        etag: v.etag.clone(),
        part_size: v.part_size,
        part,
        offset: v.part_range(part).start,
        length: len,
        object_size: v.object_size,
        sha256,
        chunk_crc32: digests,
    };
    let check = check_of(&meta);
    serde_json::to_vec(&Header { meta, check }).unwrap_or_default()
}

/// Why a block was not used although the tier answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared block does not check out: {0}")]
pub struct Corrupt(pub String);

/// Reads a block's body as it arrives and hands on its data a verified [`CHUNK`] at a
/// time.
pub struct Decoder {
    want: Version,
    part: u64,
    buf: BytesMut,
    meta: Option<Meta>,
    /// Data bytes handed on so far.
    done: u64,
}

impl Decoder {
    pub fn new(want: Version, part: u64) -> Decoder {
        Decoder {
            want,
            part,
            buf: BytesMut::new(),
            meta: None,
            done: 0,
        }
    }

    /// True once the header has arrived and checked out.
    pub fn has_header(&self) -> bool {
        self.meta.is_some()
    }

    /// Every data byte the header announced has been handed on.
    pub fn complete(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| self.done == m.length)
    }

    /// The object size the block gives (once the header is in).
    pub fn object_size(&self) -> Option<u64> {
        self.meta.as_ref().map(|m| m.object_size)
    }

    /// Takes the next bytes of the body; returns each piece of data that checked out,
    /// with its offset in the object.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<(u64, Bytes)>, Corrupt> {
        self.buf.extend_from_slice(bytes);
        if self.meta.is_none() && !self.read_header()? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        while let Some(piece) = self.next_chunk()? {
            out.push(piece);
        }
        // More than the header said is not this block: refuse it now, unbuffered.
        if let Some(m) = &self.meta
            && self.buf.len() as u64 > m.length - self.done
        {
            return Err(Corrupt(format!(
                "more data than the {} bytes its header says",
                m.length
            )));
        }
        Ok(out)
    }

    /// The body has ended: every byte of the data must have been handed on, no more.
    pub fn finish(&mut self) -> Result<Option<(u64, Bytes)>, Corrupt> {
        let Some(meta) = &self.meta else {
            return Err(Corrupt("the body ended inside its header".into()));
        };
        let length = meta.length;
        let last = self.next_chunk()?;
        if self.done != length || !self.buf.is_empty() {
            return Err(Corrupt(format!(
                "{} data bytes, the header says {length}",
                self.done + self.buf.len() as u64
            )));
        }
        Ok(last)
    }

    fn read_header(&mut self) -> Result<bool, Corrupt> {
        if self.buf.len() < 12 {
            return Ok(false);
        }
        if &self.buf[..8] != MAGIC {
            return Err(Corrupt("not an s3cachefs block of this format".into()));
        }
        let len = u32::from_le_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]]);
        let len = len as usize;
        if len > MAX_HEADER {
            return Err(Corrupt(format!("a header of {len} bytes")));
        }
        if self.buf.len() < 12 + len {
            return Ok(false);
        }
        let header: Header = serde_json::from_slice(&self.buf[12..12 + len])
            .map_err(|e| Corrupt(format!("unreadable header: {e}")))?;
        if check_of(&header.meta) != header.check {
            return Err(Corrupt("the header's checksum does not match".into()));
        }
        self.expect(&header.meta)?;
        let _ = self.buf.split_to(12 + len);
        self.meta = Some(header.meta);
        Ok(true)
    }

    /// The header must describe exactly the block asked for.
    fn expect(&self, m: &Meta) -> Result<(), Corrupt> {
        let w = &self.want;
        let range = w.part_range(self.part);
        let differs = |what: &str| Err(Corrupt(format!("its {what} is not the one asked for")));
        if m.format != FORMAT {
            return differs("format");
        }
        if (&m.origin, &m.bucket, &m.key, &m.etag) != (&w.origin, &w.bucket, &w.key, &w.etag) {
            return differs("object or version");
        }
        if m.part_size != w.part_size || m.part != self.part {
            return differs("part");
        }
        // An unknown size (0 asked) takes the block's, checked below against its length.
        if w.object_size != 0 && m.object_size != w.object_size {
            return differs("object size");
        }
        let want_range = if w.object_size == 0 {
            Version {
                object_size: m.object_size,
                ..w.clone()
            }
            .part_range(self.part)
        } else {
            range
        };
        if m.offset != want_range.start || m.length != want_range.end - want_range.start {
            return differs("offset or length");
        }
        if m.chunk_crc32.len() as u64 != m.length.div_ceil(CHUNK) {
            return differs("list of digests");
        }
        Ok(())
    }

    /// The next complete piece (a [`CHUNK`], or the rest of the data when less), verified.
    fn next_chunk(&mut self) -> Result<Option<(u64, Bytes)>, Corrupt> {
        let Some(meta) = &self.meta else {
            return Ok(None);
        };
        let left = meta.length - self.done;
        let want = left.min(CHUNK) as usize;
        if want == 0 || self.buf.len() < want {
            return Ok(None);
        }
        let piece = self.buf.split_to(want).freeze();
        let i = (self.done / CHUNK) as usize;
        if meta.chunk_crc32.get(i) != Some(&crc32fast::hash(&piece)) {
            return Err(Corrupt(format!("piece {i} does not match its CRC32")));
        }
        let at = meta.offset + self.done;
        self.done += piece.len() as u64;
        Ok(Some((at, piece)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(size: u64) -> Version {
        Version::new("http://origin", "b", "dir/k", "\"abc\"", 3 << 20, size)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// The whole body of block `part` of `v`, whose bytes are `data` (the part's length).
    fn encode(v: &Version, part: u64, data: &[u8]) -> Bytes {
        let read = |buf: &mut [u8], at: u64| {
            let at = at as usize;
            match data.get(at..at + buf.len()) {
                Some(d) => {
                    buf.copy_from_slice(d);
                    Ok(())
                }
                None => Err(std::io::Error::other("shorter than the part")),
            }
        };
        let mut out = Vec::new();
        match encode_into(v, part, &mut out, read) {
            Ok(()) => Bytes::from(out),
            Err(_) => Bytes::new(),
        }
    }

    fn decode(v: &Version, part: u64, body: &[u8], step: usize) -> Result<Vec<u8>, Corrupt> {
        let mut d = Decoder::new(v.clone(), part);
        let mut out = Vec::new();
        let mut next = v.part_range(part).start;
        for piece in body.chunks(step) {
            for (at, b) in d.feed(piece)? {
                assert_eq!(at, next);
                next += b.len() as u64;
                out.extend_from_slice(&b);
            }
        }
        if let Some((at, b)) = d.finish()? {
            assert_eq!(at, next);
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    #[test]
    fn a_block_round_trips_in_pieces_of_any_size() {
        let v = version((3 << 20) + 1000);
        let d0 = data(3 << 20);
        let body = encode(&v, 0, &d0);
        for step in [1000, 65536, 1 << 20, body.len()] {
            assert_eq!(decode(&v, 0, &body, step).expect("block 0"), d0);
        }
        let d1 = data(1000);
        let body = encode(&v, 1, &d1);
        assert_eq!(decode(&v, 1, &body, 333).expect("block 1"), d1);
    }

    #[test]
    fn keys_differ_by_every_field_and_never_collide_by_concatenation() {
        let v = version(10);
        let mut ids = std::collections::HashSet::new();
        for w in [
            v.clone(),
            Version::new("http://other", "b", "dir/k", "abc", 3 << 20, 10),
            Version::new("http://origin", "b2", "dir/k", "abc", 3 << 20, 10),
            Version::new("http://origin", "b", "dir/k2", "abc", 3 << 20, 10),
            Version::new("http://origin", "b", "dir/k", "abd", 3 << 20, 10),
            Version::new("http://origin", "b", "dir/k", "abc", 4 << 20, 10),
            Version::new("http://origin", "bd", "ir/k", "abc", 3 << 20, 10),
        ] {
            assert!(ids.insert(w.id()), "{w:?}");
        }
        assert_eq!(
            v.block_key("team/cache", 7),
            format!("team/cache/s3cachefs/v1/{}/000007", v.id())
        );
        assert_eq!(
            v.block_key("", 0),
            format!("s3cachefs/v1/{}/000000", v.id())
        );
    }

    #[test]
    fn any_changed_byte_or_field_is_refused() {
        let v = version(3 << 20);
        let good = encode(&v, 0, &data(3 << 20)).to_vec();
        // A byte of the data, of the header, of the magic.
        for at in [good.len() - 1, good.len() - (2 << 20), 20, 3] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            assert!(decode(&v, 0, &bad, 1 << 16).is_err(), "byte {at}");
        }
        // Cut short, or with bytes added.
        assert!(decode(&v, 0, &good[..good.len() - 1], 1 << 16).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(decode(&v, 0, &long, 1 << 16).is_err());
        // Another version's, part's or size's block at this key.
        let other = Version::new("http://origin", "b", "dir/k", "xyz", 3 << 20, 3 << 20);
        assert!(decode(&v, 0, &encode(&other, 0, &data(3 << 20)), 1 << 16).is_err());
        assert!(decode(&version(6 << 20), 1, &good, 1 << 16).is_err());
        assert!(decode(&version(4 << 20), 0, &good, 1 << 16).is_err());
    }

    #[test]
    fn an_unknown_object_size_is_learned_from_the_block() {
        let v = version((3 << 20) + 5);
        let body = encode(&v, 1, &data(5));
        let unknown = Version {
            object_size: 0,
            ..v.clone()
        };
        let mut d = Decoder::new(unknown, 1);
        assert!(d.feed(&body[..20]).expect("feed").is_empty());
        assert!(!d.has_header());
        d.feed(&body[20..]).expect("feed");
        assert_eq!(d.object_size(), Some((3 << 20) + 5));
    }
}
