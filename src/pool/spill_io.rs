//! Spill files on disk: written and read with io_uring where the kernel allows
//! it (else `pwrite`/`pread`, `crate::engine`), with `O_DIRECT` where the
//! filesystem allows it (else through the page cache).
//!
//! Direct I/O matters here because spilling happens when memory is short: a
//! buffered write of a 1 GB table would leave up to 1 GB of dirty page cache
//! behind, and a buffered read fills the page cache with a file read once,
//! then copies it into the arena. Direct reads go from the disk straight into
//! the arena chunk (page aligned); direct writes go from two aligned buffers
//! that the IPC writer fills in turn while the other one is written.
//!
//! Every buffer handed to the engine stays alive and untouched until its
//! completion is reaped; on an error the engine is drained first (a read into
//! an arena chunk must be over before the chunk can be given back).

use std::alloc::Layout;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::engine::{Completion, Engine, Pread, Uring};

/// One write or read.
const PIECE: usize = 8 << 20;
/// Reads in flight.
const QUEUE_DEPTH: usize = 4;
/// File offset, length and memory alignment of direct I/O (covers 512-byte
/// and 4 KiB logical blocks).
const ALIGN: usize = 4096;

fn engine() -> Box<dyn Engine + Send> {
    match Uring::new(QUEUE_DEPTH) {
        Ok(u) => Box::new(u),
        Err(_) => Box::new(Pread::default()),
    }
}

/// Waits until nothing is in flight: buffers and arena ranges the kernel may
/// still write must not be reused before that.
fn drain(engine: &mut dyn Engine) {
    while !engine.drain() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `path` opened with `O_DIRECT` when the filesystem allows it; whether it was.
fn open(path: &Path, create: bool) -> io::Result<(File, bool)> {
    let options = |direct: bool| {
        let mut o = std::fs::OpenOptions::new();
        if create {
            o.write(true).create_new(true).mode(0o600);
        } else {
            o.read(true);
        }
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o
    };
    match options(true).open(path) {
        Ok(f) => Ok((f, true)),
        // tmpfs and some others refuse O_DIRECT at open.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if create {
                let _ = std::fs::remove_file(path);
            }
            options(false).open(path).map(|f| (f, false))
        }
        Err(e) => Err(e),
    }
}

/// `PIECE` bytes aligned to `ALIGN`, for direct writes.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
}

impl AlignedBuf {
    fn layout() -> Layout {
        Layout::from_size_align(PIECE, ALIGN).expect("a valid layout")
    }

    fn new() -> io::Result<AlignedBuf> {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        std::ptr::NonNull::new(ptr)
            .map(|ptr| AlignedBuf { ptr })
            .ok_or_else(|| io::Error::other("out of memory for a spill buffer"))
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is an allocation of PIECE bytes owned by this value.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), PIECE) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout()) };
    }
}

// SAFETY: a plain heap allocation, owned.
unsafe impl Send for AlignedBuf {}

/// A new file written through two buffers: one is filled while the other is
/// being written (`std::io::Write`; `finish` to complete it).
pub struct SpillWriter {
    file: File,
    direct: bool,
    engine: Box<dyn Engine + Send>,
    bufs: [AlignedBuf; 2],
    /// The buffer being filled, and how full it is.
    current: usize,
    filled: usize,
    /// Bytes of each buffer in flight (0: none), and where they go.
    in_flight: [usize; 2],
    at: [u64; 2],
    /// Where the next buffer goes in the file.
    offset: u64,
    completions: Vec<Completion>,
}

impl SpillWriter {
    /// Creates `path` (which must not exist).
    pub fn create(path: &Path) -> io::Result<SpillWriter> {
        let (file, direct) = open(path, true)?;
        Ok(SpillWriter {
            file,
            direct,
            engine: engine(),
            bufs: [AlignedBuf::new()?, AlignedBuf::new()?],
            current: 0,
            filled: 0,
            in_flight: [0, 0],
            at: [0, 0],
            offset: 0,
            completions: Vec::new(),
        })
    }

    /// Waits for buffer `i`'s write, if any; an error or a short write fails.
    fn settle(&mut self, i: usize) -> io::Result<()> {
        while self.in_flight[i] > 0 {
            self.completions.clear();
            self.engine.wait(&mut self.completions)?;
            let done: Vec<(usize, io::Result<usize>)> = self
                .completions
                .drain(..)
                .map(|(tag, r)| (tag as usize, r))
                .collect();
            for (b, result) in done {
                let want = self.in_flight[b];
                self.in_flight[b] = 0;
                match result {
                    Ok(n) if n == want => {}
                    // A full disk takes part of a write; the rest then says why.
                    Ok(n) => self.write_rest(b, n, want)?,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Writes bytes `[from, to)` of buffer `b` (whose write came back short)
    /// on this thread: done, or the error that stopped it.
    fn write_rest(&mut self, b: usize, mut from: usize, to: usize) -> io::Result<()> {
        while from < to {
            let at = self.at[b] + from as u64;
            let data = &self.bufs[b].as_mut()[from..to];
            match rustix::io::pwrite(&self.file, data, at) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => from += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Starts writing the current buffer's `len` bytes and moves to the other.
    fn submit(&mut self, len: usize) -> io::Result<()> {
        let i = self.current;
        let ptr = self.bufs[i].ptr.as_ptr();
        // SAFETY: the buffer is PIECE >= len bytes, owned by self, and not
        // touched until `settle(i)` reaped this tag (or Drop drained).
        unsafe {
            self.engine
                .start_write(self.file.as_fd(), ptr, len, self.offset, i as u64)?
        };
        self.in_flight[i] = len;
        self.at[i] = self.offset;
        self.offset += len as u64;
        self.current = 1 - i;
        self.filled = 0;
        self.settle(self.current)
    }

    /// Writes what is left and returns the file and its length. With direct
    /// I/O the last block is written whole (zero padded), then cut back.
    pub fn finish(mut self) -> io::Result<(File, u64)> {
        let len = self.offset + self.filled as u64;
        if self.filled > 0 {
            let n = if self.direct {
                self.filled.next_multiple_of(ALIGN)
            } else {
                self.filled
            };
            let (filled, cur) = (self.filled, self.current);
            self.bufs[cur].as_mut()[filled..n].fill(0);
            self.submit(n)?;
        }
        self.settle(0)?;
        self.settle(1)?;
        if self.offset != len {
            self.file.set_len(len)?;
        }
        let file = self.file.try_clone()?;
        Ok((file, len))
    }
}

impl io::Write for SpillWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIECE - self.filled);
        let (filled, cur) = (self.filled, self.current);
        self.bufs[cur].as_mut()[filled..filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == PIECE {
            self.submit(PIECE)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SpillWriter {
    fn drop(&mut self) {
        // The buffers are freed after this: nothing may still write from them.
        drain(&mut *self.engine);
    }
}

/// The room to read a file of `len` bytes into for `read_into` to read it
/// directly: its last block whole.
pub fn room_for(len: u64) -> u64 {
    len.next_multiple_of(ALIGN as u64)
}

/// Reads the `len` bytes of the file at `path` into `dest[..len]`: directly
/// into `dest` when it is aligned and has room for the last block whole
/// (`room_for`),
/// else (or when the filesystem refuses direct I/O) through the page cache.
/// Fails if the file does not have exactly `len` bytes.
pub fn read_into(path: &Path, dest: &mut [u8], len: usize) -> io::Result<()> {
    let (file, direct) = open(path, false)?;
    let on_disk = file.metadata()?.len();
    if on_disk != len as u64 {
        return Err(io::Error::other(format!(
            "the file has {on_disk} bytes, {len} were written (damaged or replaced)"
        )));
    }
    let span = len.next_multiple_of(ALIGN);
    let aligned = (dest.as_ptr() as usize).is_multiple_of(ALIGN) && dest.len() >= span;
    if len > dest.len() {
        return Err(io::Error::other("the file is larger than its room"));
    }
    if direct && aligned {
        match read_pieces(&file, dest, len, span) {
            // A filesystem that takes O_DIRECT at open but not on reads.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            other => return other,
        }
    }
    read_pieces(&File::open(path)?, dest, len, len)
}

/// Reads `[0, span)` of `file` into `dest` in pieces, several in flight;
/// bytes past `len` (the file's end) are not expected.
fn read_pieces(file: &File, dest: &mut [u8], len: usize, span: usize) -> io::Result<()> {
    let mut engine = engine();
    let depth = engine.queue_depth();
    let pieces: Vec<(usize, usize)> = (0..span)
        .step_by(PIECE)
        .map(|at| (at, PIECE.min(span - at)))
        .collect();
    let base = dest.as_mut_ptr();
    let mut next = 0;
    let mut completions = Vec::new();
    let mut failed: Option<io::Error> = None;
    let mut left = pieces.len();
    while left > 0 {
        while failed.is_none() && next < pieces.len() && engine.in_flight() < depth {
            let (at, n) = pieces[next];
            // SAFETY: `[at, at + n)` lies in `dest` (`span <= dest.len()`),
            // which the caller keeps borrowed until this function returns,
            // after every completion is reaped (or drained on errors).
            let started =
                unsafe { engine.start(file.as_fd(), base.add(at), n, at as u64, next as u64) };
            if let Err(e) = started {
                failed = Some(e);
                break;
            }
            next += 1;
        }
        if engine.in_flight() == 0 {
            break;
        }
        completions.clear();
        if let Err(e) = engine.wait(&mut completions) {
            failed.get_or_insert(e);
            break;
        }
        for (tag, result) in completions.drain(..) {
            left -= 1;
            let (at, _) = pieces[tag as usize];
            let want = PIECE.min(len.saturating_sub(at));
            match result {
                Ok(n) if n == want => {}
                Ok(n) => {
                    failed.get_or_insert(io::Error::other(format!(
                        "short read at byte {at}: {n} of {want} bytes"
                    )));
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if failed.is_some() {
            break;
        }
    }
    drain(&mut *engine);
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Sizes around the buffer and block boundaries, on disk (direct I/O
    /// where the filesystem takes it) and on tmpfs (which refuses it).
    #[test]
    fn files_written_and_read_back_are_exact() {
        let dirs = [
            tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap(),
            tempfile::tempdir_in("/dev/shm").unwrap(),
        ];
        for dir in &dirs {
            for n in [
                0,
                1,
                4095,
                4096,
                4097,
                PIECE - 1,
                PIECE,
                PIECE + 1,
                2 * PIECE + 12345,
            ] {
                let data = pattern(n);
                let path = dir.path().join(format!("f{n}"));
                let mut w = SpillWriter::create(&path).unwrap();
                // In odd-sized writes, as the IPC writer makes them.
                for part in data.chunks(1000 + n % 7) {
                    w.write_all(part).unwrap();
                }
                let (f, len) = w.finish().unwrap();
                assert_eq!(len, n as u64);
                assert_eq!(f.metadata().unwrap().len(), n as u64);
                assert_eq!(std::fs::read(&path).unwrap(), data, "{n} bytes");
                // Into aligned room with space for the last block, and not.
                let layout =
                    Layout::from_size_align(n.next_multiple_of(ALIGN).max(ALIGN), ALIGN).unwrap();
                // SAFETY: non-zero size; freed below with the same layout.
                let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
                // SAFETY: `ptr` holds layout.size() bytes, freed below.
                let room = unsafe { std::slice::from_raw_parts_mut(ptr, layout.size()) };
                read_into(&path, room, n).unwrap();
                assert!(room[..n] == data[..], "{n} bytes read back");
                let mut tight = vec![0u8; n];
                read_into(&path, &mut tight, n).unwrap();
                assert!(tight == data);
                // A length that is not the file's is refused.
                assert!(read_into(&path, room, n + 1).is_err() || n + 1 > room.len());
                // SAFETY: allocated above with this layout.
                unsafe { std::alloc::dealloc(ptr, layout) };
            }
        }
    }

    #[test]
    fn an_existing_file_is_not_overwritten() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"keep").unwrap();
        assert!(SpillWriter::create(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }
}
