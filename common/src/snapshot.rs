//! The snapshot file (`kvctl snapshot save`, `kvd restore`): one replica's replicated state at
//! one revision, as a versioned, SHA-256-checksummed byte stream. kvd writes it
//! (`GET /v1/snapshot`), kvctl verifies it as it arrives, kvd restore verifies it again as it
//! seeds a data dir. docs/api.md ("Snapshot file format") is the contract; all integers are
//! big-endian:
//!
//! ```text
//! magic "OMKVSNAP" | version u32 | cluster_id u64 | revision u64 | applied config u32 |
//! applied index u64 | keys u64 | state hash u64 | created unix ms u64 |
//! cf count u8, then per cf: name length u8, name | meta length u32, meta (bincode SmMeta)
//! items: 0x01 | cf u8 | key length u32 | key | value length u32 | value   (repeated)
//! end:   0x00 | per cf: item count u64 | SHA-256 of every byte before it (32 bytes) | EOF
//! ```
//!
//! The reader never allocates more than a length it has checked against a bound, and never
//! trusts a byte it has not hashed: a file is good only once its trailer matched.

use sha2::{Digest, Sha256};
use std::io::Read;

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"OMKVSNAP";
/// The format this build writes and reads.
pub const VERSION: u32 = 1;
/// Largest key or value an item may claim (kvd's own limits are far below).
pub const MAX_FIELD_BYTES: u32 = 256 * 1024 * 1024;
/// Largest state-machine meta a header may claim.
pub const MAX_META_BYTES: u32 = 64 * 1024;
/// Most column families a header may name.
pub const MAX_CFS: usize = 16;
/// Response headers of `GET /v1/snapshot` naming the revision and key count (the file's
/// header says the same).
pub const HEADER_SNAPSHOT_REVISION: &str = "omnikv-snapshot-revision";
pub const HEADER_SNAPSHOT_KEYS: &str = "omnikv-snapshot-keys";
const TAG_ITEM: u8 = 1;
const TAG_END: u8 = 0;

/// What a snapshot file says about itself before its items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The cluster the state was taken from.
    pub cluster_id: u64,
    /// The store revision of the state.
    pub revision: u64,
    /// The applied position of the state: `applied_index` entries of configuration
    /// `applied_config_id`.
    pub applied_config_id: u32,
    pub applied_index: u64,
    /// Keys in the `kv` family.
    pub keys: u64,
    /// The state hash (`status`'s `state_hash`): XOR of a hash of every key and value.
    pub state_hash: u64,
    pub created_unix_ms: u64,
    /// The column families the items belong to, by name; an item's `cf` indexes this list.
    pub cfs: Vec<String>,
    /// The state-machine meta exactly as the replica stored it (kvd's bincode `SmMeta`).
    pub sm_meta: Vec<u8>,
}

/// One record of one column family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub cf: u8,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// What the trailer of a verified file said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Items per column family, in header order.
    pub counts: Vec<u64>,
    pub sha256: [u8; 32],
}

impl Trailer {
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why a snapshot file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not an omnikv snapshot file (bad magic)")]
    BadMagic,
    #[error("snapshot format version {0} is not one this build reads (it reads {VERSION})")]
    Version(u32),
    #[error("snapshot file is truncated (it ends before its trailer)")]
    Truncated,
    #[error("snapshot file is corrupt: {0}")]
    Corrupt(String),
    #[error("reading the snapshot: {0}")]
    Io(std::io::Error),
}

fn corrupt(msg: impl Into<String>) -> FormatError {
    FormatError::Corrupt(msg.into())
}

/// Writes a snapshot into byte chunks: `header`, then `item`s, then `finish`; `take` hands
/// over what was written so far (the caller streams it). Every byte but the digest is hashed.
pub struct Encoder {
    buf: Vec<u8>,
    hasher: Sha256,
    counts: Vec<u64>,
    written: u64,
}

impl Encoder {
    /// Starts a file with `header`.
    pub fn new(header: &Header) -> Encoder {
        assert!(
            header.cfs.len() <= MAX_CFS,
            "at most {MAX_CFS} column families"
        );
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_be_bytes());
        for v in [header.cluster_id, header.revision] {
            buf.extend_from_slice(&v.to_be_bytes());
        }
        buf.extend_from_slice(&header.applied_config_id.to_be_bytes());
        for v in [
            header.applied_index,
            header.keys,
            header.state_hash,
            header.created_unix_ms,
        ] {
            buf.extend_from_slice(&v.to_be_bytes());
        }
        buf.push(header.cfs.len() as u8);
        for name in &header.cfs {
            buf.push(name.len() as u8);
            buf.extend_from_slice(name.as_bytes());
        }
        buf.extend_from_slice(&(header.sm_meta.len() as u32).to_be_bytes());
        buf.extend_from_slice(&header.sm_meta);
        Encoder {
            buf,
            hasher: Sha256::new(),
            counts: vec![0; header.cfs.len()],
            written: 0,
        }
    }

    /// Appends one item of column family `cf` (an index into the header's list).
    pub fn item(&mut self, cf: u8, key: &[u8], value: &[u8]) {
        self.counts[usize::from(cf)] += 1;
        self.buf.push(TAG_ITEM);
        self.buf.push(cf);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(key);
        self.buf
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(value);
    }

    /// Bytes written and not yet taken.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Bytes taken so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Hands over what was written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        self.hasher.update(&self.buf);
        self.written += self.buf.len() as u64;
        std::mem::replace(&mut self.buf, Vec::with_capacity(64 * 1024))
    }

    /// Writes the trailer; returns the last bytes of the file and the trailer.
    pub fn finish(mut self) -> (Vec<u8>, Trailer) {
        self.buf.push(TAG_END);
        for c in &self.counts {
            self.buf.extend_from_slice(&c.to_be_bytes());
        }
        self.hasher.update(&self.buf);
        let sha256: [u8; 32] = self.hasher.finalize().into();
        self.buf.extend_from_slice(&sha256);
        (
            self.buf,
            Trailer {
                counts: self.counts,
                sha256,
            },
        )
    }
}

/// Reads and verifies a snapshot stream: `open` checks the header, `next_item` yields the
/// items and, at the end, checks counts, digest and that nothing follows. Items handed out
/// before the end are not yet verified: act on them only once `next_item` returned `None`.
pub struct Reader<R> {
    inner: R,
    hasher: Sha256,
    header: Header,
    counts: Vec<u64>,
    trailer: Option<Trailer>,
    /// Bytes consumed so far.
    pub bytes: u64,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    pub fn open(inner: R) -> Result<Reader<R>, FormatError> {
        let mut r = Reader {
            inner,
            hasher: Sha256::new(),
            header: Header {
                cluster_id: 0,
                revision: 0,
                applied_config_id: 0,
                applied_index: 0,
                keys: 0,
                state_hash: 0,
                created_unix_ms: 0,
                cfs: Vec::new(),
                sm_meta: Vec::new(),
            },
            counts: Vec::new(),
            trailer: None,
            bytes: 0,
        };
        let mut magic = [0u8; 8];
        r.exact(&mut magic).map_err(|e| match e {
            FormatError::Truncated => FormatError::BadMagic,
            e => e,
        })?;
        if &magic != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let mut h = Header {
            cluster_id: r.u64()?,
            revision: r.u64()?,
            applied_config_id: r.u32()?,
            applied_index: r.u64()?,
            keys: r.u64()?,
            state_hash: r.u64()?,
            created_unix_ms: r.u64()?,
            cfs: Vec::new(),
            sm_meta: Vec::new(),
        };
        let n = r.u8()? as usize;
        if n == 0 || n > MAX_CFS {
            return Err(corrupt(format!("{n} column families in the header")));
        }
        for _ in 0..n {
            let len = r.u8()? as usize;
            let mut name = vec![0u8; len];
            r.exact(&mut name)?;
            let name = String::from_utf8(name)
                .map_err(|_| corrupt("a column family name is not UTF-8"))?;
            if h.cfs.contains(&name) {
                return Err(corrupt(format!("column family {name:?} named twice")));
            }
            h.cfs.push(name);
        }
        let len = r.u32()?;
        if len > MAX_META_BYTES {
            return Err(corrupt(format!("state-machine meta of {len} bytes")));
        }
        h.sm_meta = r.field(len)?;
        r.counts = vec![0; n];
        r.header = h;
        Ok(r)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Items read so far, per column family.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The next item, or `None` once the trailer verified (then `trailer` is set).
    pub fn next_item(&mut self) -> Result<Option<Item>, FormatError> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        match self.u8()? {
            TAG_ITEM => {
                let cf = self.u8()?;
                let Some(count) = self.counts.get_mut(usize::from(cf)) else {
                    return Err(corrupt(format!("item of unknown column family #{cf}")));
                };
                *count += 1;
                let klen = self.u32()?;
                if klen > MAX_FIELD_BYTES {
                    return Err(corrupt(format!("key of {klen} bytes")));
                }
                let key = self.field(klen)?;
                let vlen = self.u32()?;
                if vlen > MAX_FIELD_BYTES {
                    return Err(corrupt(format!("value of {vlen} bytes")));
                }
                let value = self.field(vlen)?;
                Ok(Some(Item { cf, key, value }))
            }
            TAG_END => {
                let mut counts = Vec::with_capacity(self.counts.len());
                for _ in 0..self.counts.len() {
                    counts.push(self.u64()?);
                }
                let computed: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
                let mut sha256 = [0u8; 32];
                self.read_raw(&mut sha256)?;
                if sha256 != computed {
                    return Err(corrupt("SHA-256 checksum mismatch"));
                }
                if counts != self.counts {
                    return Err(corrupt(format!(
                        "the trailer counts {counts:?} items, the file holds {:?}",
                        self.counts
                    )));
                }
                let mut extra = [0u8; 1];
                if self.read_some(&mut extra)? != 0 {
                    return Err(corrupt("bytes after the trailer"));
                }
                self.trailer = Some(Trailer { counts, sha256 });
                Ok(None)
            }
            tag => Err(corrupt(format!(
                "unknown record tag {tag:#04x} at byte {}",
                self.bytes - 1
            ))),
        }
    }

    /// The verified trailer, once `next_item` returned `None`.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.trailer.as_ref()
    }

    /// Reads every remaining item, calling `each` on it, and returns the verified trailer.
    pub fn verify_all(
        &mut self,
        mut each: impl FnMut(&Item) -> Result<(), FormatError>,
    ) -> Result<Trailer, FormatError> {
        while let Some(item) = self.next_item()? {
            each(&item)?;
        }
        Ok(self
            .trailer
            .clone()
            .expect("set when next_item returns None"))
    }

    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, FormatError> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FormatError::Io(e)),
            }
        }
    }

    fn read_raw(&mut self, buf: &mut [u8]) -> Result<(), FormatError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                FormatError::Truncated
            } else {
                FormatError::Io(e)
            }
        })?;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), FormatError> {
        self.read_raw(buf)?;
        self.hasher.update(&*buf);
        Ok(())
    }

    /// A field of `len` bytes, already checked against its bound. Grows with what arrives,
    /// so a truncated file never makes it allocate the length it claims.
    fn field(&mut self, len: u32) -> Result<Vec<u8>, FormatError> {
        let mut v = Vec::new();
        let n = (&mut self.inner)
            .take(u64::from(len))
            .read_to_end(&mut v)
            .map_err(FormatError::Io)?;
        if n != len as usize {
            return Err(FormatError::Truncated);
        }
        self.bytes += u64::from(len);
        self.hasher.update(&v);
        Ok(v)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            cluster_id: 0xabc,
            revision: 42,
            applied_config_id: 2,
            applied_index: 17,
            keys: 2,
            state_hash: 0x1234,
            created_unix_ms: 1_700_000_000_000,
            cfs: vec!["kv".into(), "dedup".into(), "lease".into()],
            sm_meta: vec![9, 8, 7],
        }
    }

    fn file() -> Vec<u8> {
        let mut e = Encoder::new(&header());
        e.item(0, b"a", b"1");
        let mut out = e.take();
        e.item(0, b"b", &[0xff; 300]);
        e.item(1, &[0; 16], b"dedup");
        let (tail, trailer) = e.finish();
        assert_eq!(trailer.counts, vec![2, 1, 0]);
        out.extend_from_slice(&tail);
        out
    }

    fn read(bytes: &[u8]) -> Result<(Header, Vec<Item>, Trailer), FormatError> {
        let mut r = Reader::open(bytes)?;
        let mut items = Vec::new();
        let t = r.verify_all(|i| {
            items.push(i.clone());
            Ok(())
        })?;
        Ok((r.header().clone(), items, t))
    }

    #[test]
    fn a_file_reads_back_as_written() {
        let (h, items, t) = read(&file()).unwrap();
        assert_eq!(h, header());
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].value, vec![0xff; 300]);
        assert_eq!(t.counts, vec![2, 1, 0]);
        assert_eq!(t.sha256_hex().len(), 64);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let good = file();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(read(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
        for len in 0..good.len() {
            let e = read(&good[..len]).unwrap_err();
            assert!(
                matches!(e, FormatError::Truncated | FormatError::BadMagic),
                "cut at {len}: {e}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(read(&longer), Err(FormatError::Corrupt(_))));
    }

    #[test]
    fn an_absurd_length_is_refused_before_any_allocation() {
        let mut bad = file();
        // The first item's key length (after the header) claims 4 GiB.
        let at = Encoder::new(&header()).take().len() + 2;
        bad[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let e = read(&bad).unwrap_err();
        assert!(e.to_string().contains("key of"), "{e}");
    }
}
