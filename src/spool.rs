//! The request spool: where uploaded file parts are kept while a request is in flight, so the
//! same bytes can be sent to the provider (and replayed to a fallback or an async job) in any
//! order, whatever order the client sent the parts in.
//!
//! The first `memory_limit` bytes stay in memory as the `Bytes` chunks the parser produced (no
//! copy). Everything after goes to an anonymous temporary file, which the operating system
//! removes when the spool is dropped, even if the process dies. Memory per request is therefore
//! bounded by the threshold, whatever the image size.
//!
//! Writes to the file use plain `std::fs` calls: they land in the page cache and take
//! microseconds per chunk, far less than handing each chunk to a blocking thread would cost.

use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// A byte range of the spool: where one file part's content lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpoolRange {
    /// Offset of the first byte.
    pub start: u64,
    /// Number of bytes.
    pub len: u64,
}

/// Append-only store of uploaded bytes: memory first, then an anonymous temp file.
#[derive(Debug)]
pub struct Spool {
    memory: Vec<(u64, Bytes)>,
    memory_len: u64,
    memory_limit: u64,
    file: Option<File>,
    file_len: u64,
    directory: Option<PathBuf>,
    /// The masks converted from this spool's mask part, once per convention for the whole
    /// request (see [`Spool::converted_masks`]).
    masks: crate::imaging::ConvertedMasks,
}

/// Size of the chunks handed out when reading file-backed ranges.
pub const READ_CHUNK: usize = 64 * 1024;

impl Spool {
    /// An empty spool that keeps up to `memory_limit` bytes in memory and puts the rest in a
    /// temp file in `directory` (the system temp dir when `None`).
    pub fn new(memory_limit: usize, directory: Option<PathBuf>) -> Self {
        Spool {
            memory: Vec::new(),
            memory_len: 0,
            memory_limit: memory_limit as u64,
            file: None,
            file_len: 0,
            directory,
            masks: Default::default(),
        }
    }

    /// An empty spool for one request, as the config's `spool` section says.
    pub fn for_request(settings: &crate::config::SpoolSettings) -> Self {
        Spool::new(settings.memory_bytes, settings.directory.clone())
    }

    /// Total bytes stored.
    pub fn len(&self) -> u64 {
        self.memory_len + self.file_len
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the spool has spilled to a temp file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The request's masks converted for providers, kept next to the upload they come from:
    /// every attempt of the request (retries, fallbacks) is rebuilt from this spool and
    /// reuses a conversion made for an earlier one.
    pub fn converted_masks(&self) -> &crate::imaging::ConvertedMasks {
        &self.masks
    }

    /// Appends one chunk; returns the offset it was stored at.
    pub fn append(&mut self, chunk: Bytes) -> io::Result<u64> {
        let offset = self.len();
        if chunk.is_empty() {
            return Ok(offset);
        }
        if self.file.is_none() && self.memory_len + chunk.len() as u64 <= self.memory_limit {
            self.memory_len += chunk.len() as u64;
            self.memory.push((offset, chunk));
            return Ok(offset);
        }
        if self.file.is_none() {
            let file = match &self.directory {
                Some(dir) => tempfile::tempfile_in(dir)?,
                None => tempfile::tempfile()?,
            };
            self.file = Some(file);
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(&chunk)?;
        }
        self.file_len += chunk.len() as u64;
        Ok(offset)
    }

    /// The bytes of `range` in order, as chunks: memory-backed data as cheap slices of the
    /// stored chunks, file-backed data read in chunks of at most [`READ_CHUNK`] bytes.
    pub fn chunks(&self, range: SpoolRange) -> SpoolChunks<'_> {
        SpoolChunks {
            spool: self,
            pos: range.start,
            end: range.start + range.len,
        }
    }

    /// An owned reader over `range` (memory chunks shared, the temp file's descriptor
    /// duplicated): it outlives the borrow of the spool, so a decoder on the blocking pool reads
    /// the upload in place instead of a copy of it.
    pub fn reader(&self, range: SpoolRange) -> io::Result<SpoolReader> {
        let end = range.start + range.len;
        let memory = self
            .memory
            .iter()
            .filter(|(off, b)| *off < end && off + b.len() as u64 > range.start)
            .cloned()
            .collect();
        let file = match (&self.file, end > self.memory_len) {
            (Some(f), true) => Some(f.try_clone()?),
            _ => None,
        };
        Ok(SpoolReader {
            memory,
            memory_len: self.memory_len,
            file,
            range,
            pos: 0,
        })
    }

    /// Reads a whole range into one vector (tests; not the proxy hot path, which streams
    /// [`Spool::chunks`]).
    pub fn read_all(&self, range: SpoolRange) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(range.len as usize);
        for chunk in self.chunks(range) {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

/// Iterator over the chunks of a spool range; see [`Spool::chunks`].
#[derive(Debug)]
pub struct SpoolChunks<'a> {
    spool: &'a Spool,
    pos: u64,
    end: u64,
}

impl Iterator for SpoolChunks<'_> {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.pos >= self.end {
            return None;
        }
        let s = self.spool;
        if self.pos < s.memory_len {
            let i = s.memory.partition_point(|(off, b)| off + b.len() as u64 <= self.pos);
            let (off, bytes) = s.memory.get(i)?;
            let from = (self.pos - off) as usize;
            let to = ((self.end - off) as usize).min(bytes.len());
            self.pos = off + to as u64;
            return Some(Ok(bytes.slice(from..to)));
        }
        let Some(file) = s.file.as_ref() else {
            self.pos = self.end;
            return Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "range beyond the spool",
            )));
        };
        let want = ((self.end - self.pos) as usize).min(READ_CHUNK);
        let mut buf = BytesMut::zeroed(want);
        if let Err(e) = file.read_exact_at(&mut buf, self.pos - s.memory_len) {
            self.pos = self.end;
            return Some(Err(e));
        }
        self.pos += want as u64;
        Some(Ok(buf.freeze()))
    }
}

/// A reader over one range of a spool, owning what it reads from; see [`Spool::reader`].
/// Positions are relative to the range's start.
#[derive(Debug)]
pub struct SpoolReader {
    memory: Vec<(u64, Bytes)>,
    memory_len: u64,
    file: Option<File>,
    range: SpoolRange,
    pos: u64,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.range.len.saturating_sub(self.pos);
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let at = self.range.start + self.pos;
        let want = (left.min(buf.len() as u64)) as usize;
        let n = if at < self.memory_len {
            let i = self.memory.partition_point(|(off, b)| off + b.len() as u64 <= at);
            let (off, bytes) = self
                .memory
                .get(i)
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "range beyond the spool"))?;
            let from = (at - off) as usize;
            let n = want.min(bytes.len() - from);
            buf[..n].copy_from_slice(&bytes[from..from + n]);
            n
        } else {
            use std::os::unix::fs::FileExt;
            let file = self
                .file
                .as_ref()
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "range beyond the spool"))?;
            let n = file.read_at(&mut buf[..want], at - self.memory_len)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "range beyond the spool"));
            }
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SpoolReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.range.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(s: &Spool, r: SpoolRange) -> Vec<u8> {
        s.read_all(r).unwrap()
    }

    #[test]
    fn memory_only_ranges() {
        let mut s = Spool::new(1024, None);
        s.append(Bytes::from_static(b"hello ")).unwrap();
        s.append(Bytes::from_static(b"world")).unwrap();
        assert!(!s.spilled());
        assert_eq!(collect(&s, SpoolRange { start: 0, len: 11 }), b"hello world");
        assert_eq!(collect(&s, SpoolRange { start: 3, len: 5 }), b"lo wo");
        assert_eq!(collect(&s, SpoolRange { start: 6, len: 5 }), b"world");
    }

    #[test]
    fn spills_to_file_and_reads_across_the_boundary() {
        let mut s = Spool::new(8, None);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(7) {
            s.append(Bytes::copy_from_slice(chunk)).unwrap();
        }
        assert!(s.spilled());
        assert_eq!(s.len(), data.len() as u64);
        for (start, len) in [(0u64, 200_000u64), (5, 10), (100, 70_000), (199_990, 10)] {
            let got = collect(&s, SpoolRange { start, len });
            assert_eq!(got, &data[start as usize..(start + len) as usize]);
        }
    }

    #[test]
    fn file_chunks_are_bounded() {
        let mut s = Spool::new(0, None);
        s.append(Bytes::from(vec![7u8; 3 * READ_CHUNK + 5])).unwrap();
        let sizes: Vec<usize> = s
            .chunks(SpoolRange { start: 0, len: s.len() })
            .map(|b| b.unwrap().len())
            .collect();
        assert_eq!(sizes, vec![READ_CHUNK, READ_CHUNK, READ_CHUNK, 5]);
    }

    #[test]
    fn temp_file_leaves_nothing_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::new(0, Some(dir.path().to_path_buf()));
            s.append(Bytes::from_static(b"abc")).unwrap();
            assert!(s.spilled());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn readers_read_and_seek_across_memory_and_file() {
        let mut s = Spool::new(100, None);
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        for chunk in data.chunks(33) {
            s.append(Bytes::copy_from_slice(chunk)).unwrap();
        }
        assert!(s.spilled());
        for (start, len) in [(0u64, 5000u64), (50, 100), (120, 30), (4990, 10)] {
            let mut r = s.reader(SpoolRange { start, len }).unwrap();
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            assert_eq!(got, &data[start as usize..(start + len) as usize]);
            r.seek(SeekFrom::Start(len / 2)).unwrap();
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, &data[(start + len / 2) as usize..(start + len) as usize]);
            assert_eq!(r.seek(SeekFrom::End(-1)).unwrap(), len - 1);
            assert!(r.seek(SeekFrom::Current(-(len as i64) - 1)).is_err());
        }
        // The reader outlives the spool.
        let mut r = s.reader(SpoolRange { start: 90, len: 40 }).unwrap();
        drop(s);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, &data[90..130]);
    }

    #[test]
    fn range_beyond_the_end_is_an_error() {
        let s = Spool::new(4, None);
        assert!(s.read_all(SpoolRange { start: 0, len: 3 }).is_err());
    }
}
