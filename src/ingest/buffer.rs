//! Read buffers: aligned, never zeroed, handed to the decoders as `Bytes`
//! without a copy, and counted against a read-ahead budget.
//!
//! One `ReadBuf` holds one extent (a run of adjacent column chunks). Reads fill
//! it in pieces; once every piece has completed, `into_bytes` turns it into a
//! `Bytes` whose slices are the column chunks pushed into the decoder. The
//! budget bytes come back when the last slice is dropped, which is what lets
//! the reader run ahead of the decoders by a bounded amount.

use std::mem::MaybeUninit;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

/// How many bytes read from Parquet files may wait for (or sit in) the
/// decoders, and whether the ingest was called off.
#[derive(Debug)]
pub struct ReadBudget {
    limit_bytes: u64,
    state: Mutex<BudgetState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct BudgetState {
    buffered_bytes: u64,
    units_dispatched: u64,
    units_finished: u64,
    cancelled: bool,
}

impl ReadBudget {
    pub fn new(limit_bytes: u64) -> Arc<ReadBudget> {
        Arc::new(ReadBudget {
            limit_bytes,
            state: Mutex::new(BudgetState::default()),
            changed: Condvar::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, BudgetState> {
        // Counters only: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `n` bytes if they fit (or nothing else is buffered).
    pub fn try_acquire(&self, n: u64) -> bool {
        let mut s = self.state();
        if s.buffered_bytes == 0 || s.buffered_bytes + n <= self.limit_bytes {
            s.buffered_bytes += n;
            true
        } else {
            false
        }
    }

    /// Waits until `n` bytes fit, then takes them. Gives up waiting (and takes
    /// them anyway) once every dispatched unit has been decoded: whatever still
    /// holds bytes then is not a decoder that will release them soon, and
    /// waiting longer could only deadlock. Returns false if the ingest was
    /// cancelled.
    pub fn acquire(&self, n: u64) -> bool {
        let mut s = self.state();
        loop {
            if s.cancelled {
                return false;
            }
            let fits = s.buffered_bytes == 0 || s.buffered_bytes + n <= self.limit_bytes;
            if fits || s.units_finished >= s.units_dispatched {
                s.buffered_bytes += n;
                return true;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn release(&self, n: u64) {
        let mut s = self.state();
        s.buffered_bytes = s.buffered_bytes.saturating_sub(n);
        drop(s);
        self.changed.notify_all();
    }

    pub fn unit_dispatched(&self) {
        self.state().units_dispatched += 1;
    }

    pub fn unit_finished(&self) {
        self.state().units_finished += 1;
        self.changed.notify_all();
    }

    /// Calls the ingest off: the reader stops submitting, decoders stop taking units.
    pub fn cancel(&self) {
        self.state().cancelled = true;
        self.changed.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        self.state().cancelled
    }
}

/// Read buffers freed by the decoders, for the reader to use again: fresh
/// memory costs a page fault and a zeroed page per 4 KiB (or 2 MiB) on first
/// touch, reused memory costs nothing. Measured on the 2-core VM: zeroing the
/// read buffers of each ingest was 16% of a steady ingest's CPU time when
/// every ingest allocated its own (this VM's first touch of memory is slow).
///
/// The server has one pool (`BufferPool::shared`). While an ingest runs it
/// keeps every buffer freed (at most what was in flight at once: about the
/// read-ahead budget); when the last running ingest ends it keeps at most
/// `keep` bytes of them for the next ingest (`--ingest-buffers`) and frees
/// the rest.
#[derive(Debug, Default)]
pub struct BufferPool {
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    free: Vec<Box<[MaybeUninit<u8>]>>,
    free_bytes: usize,
    /// Ingests running (holding an `IngestBuffers`).
    ingests: usize,
    /// Bytes kept once no ingest runs.
    keep: usize,
}

/// Buffers are allocated in multiples of this, so that extents of similar
/// size (row groups) fit each other's buffers.
const POOL_GRANULE_BYTES: usize = 8 * 1024 * 1024;
/// Buffers from this size on ask for transparent hugepages: one fault per
/// 2 MiB instead of per 4 KiB, where the machine allows it (`madvise` mode).
const HUGEPAGE_MIN_BYTES: usize = 4 * 1024 * 1024;
const HUGEPAGE_BYTES: usize = 2 * 1024 * 1024;

/// An ingest's hold on a pool: buffers freed while any is held stay in the
/// pool; dropping the last one trims the pool to its `keep` bytes.
#[derive(Debug)]
pub struct IngestBuffers {
    pool: Arc<BufferPool>,
}

impl Drop for IngestBuffers {
    fn drop(&mut self) {
        let freed = {
            let mut s = self.pool.state();
            s.ingests -= 1;
            if s.ingests == 0 {
                s.trim()
            } else {
                Vec::new()
            }
        };
        // Freed outside the lock: returning memory to the system takes time.
        drop(freed);
    }
}

impl PoolState {
    /// Takes out the buffers beyond `keep` bytes, largest first.
    fn trim(&mut self) -> Vec<Box<[MaybeUninit<u8>]>> {
        let mut out = Vec::new();
        if self.free_bytes <= self.keep {
            return out;
        }
        self.free.sort_by_key(|b| b.len());
        while self.free_bytes > self.keep {
            let Some(b) = self.free.pop() else { break };
            self.free_bytes -= b.len();
            out.push(b);
        }
        out
    }
}

impl BufferPool {
    pub fn new() -> Arc<BufferPool> {
        Arc::new(BufferPool::default())
    }

    /// The process's pool, which every ingest reads into (files and objects).
    pub fn shared() -> Arc<BufferPool> {
        static SHARED: std::sync::OnceLock<Arc<BufferPool>> = std::sync::OnceLock::new();
        SHARED.get_or_init(BufferPool::new).clone()
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // A list of free buffers and its byte count, updated together under
        // the lock: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the pool for an ingest; once no ingest holds it, at most `keep`
    /// bytes of buffers stay in it.
    pub fn begin_ingest(self: &Arc<Self>, keep: usize) -> IngestBuffers {
        let mut s = self.state();
        s.ingests += 1;
        s.keep = keep;
        IngestBuffers { pool: self.clone() }
    }

    /// While no ingest runs: fills the pool with buffers of `piece` bytes,
    /// every page touched, up to `keep` bytes in all (what it keeps between
    /// ingests), so that the first ingest reads into memory that exists.
    /// Returns the bytes added.
    pub fn prewarm(&self, keep: usize, piece: usize) -> usize {
        let mut added = 0;
        loop {
            {
                let mut s = self.state();
                s.keep = keep;
                if s.ingests > 0 || s.free_bytes + piece > keep {
                    return added;
                }
            }
            let mut mem = allocate(piece);
            for page in mem.chunks_mut(4096) {
                page[0] = MaybeUninit::new(0);
            }
            let mut s = self.state();
            if s.ingests > 0 || s.free_bytes + piece > keep {
                return added;
            }
            s.free_bytes += mem.len();
            s.free.push(mem);
            added += piece;
        }
    }

    /// Bytes of free buffers held.
    pub fn free_bytes(&self) -> usize {
        self.state().free_bytes
    }

    /// The smallest free buffer of at least `len` bytes, or a new one.
    fn take(&self, len: usize) -> Box<[MaybeUninit<u8>]> {
        let mut s = self.state();
        let best = s
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let b = s.free.swap_remove(i);
                s.free_bytes -= b.len();
                b
            }
            None => {
                drop(s);
                allocate(len.next_multiple_of(POOL_GRANULE_BYTES))
            }
        }
    }

    fn put(&self, mem: Box<[MaybeUninit<u8>]>) {
        let mut s = self.state();
        if s.ingests == 0 && s.free_bytes + mem.len() > s.keep {
            drop(s);
            drop(mem);
            return;
        }
        s.free_bytes += mem.len();
        s.free.push(mem);
    }
}

/// Uninitialized memory, with transparent hugepages asked for when large.
fn allocate(len: usize) -> Box<[MaybeUninit<u8>]> {
    let mut mem = Box::<[u8]>::new_uninit_slice(len);
    if len >= HUGEPAGE_MIN_BYTES {
        let addr = mem.as_mut_ptr() as usize;
        let start = addr.next_multiple_of(HUGEPAGE_BYTES);
        let end = (addr + len) / HUGEPAGE_BYTES * HUGEPAGE_BYTES;
        if end > start {
            // SAFETY: [start, end) lies inside `mem`, which we own; MADV_HUGEPAGE
            // only changes how its pages are backed, never their contents or
            // addresses. Best effort: an error leaves 4 KiB pages.
            let _ = unsafe {
                rustix::mm::madvise(
                    start as *mut std::ffi::c_void,
                    end - start,
                    rustix::mm::Advice::LinuxHugepage,
                )
            };
        }
    }
    mem
}

/// An aligned buffer that reads write into. Its memory starts uninitialized
/// (zeroing hundreds of megabytes only to overwrite them would cost as much as
/// a copy); `valid` bytes are exposed once reads have written them.
#[derive(Debug)]
pub struct ReadBuf {
    mem: Box<[MaybeUninit<u8>]>,
    /// Offset of the aligned window in `mem`.
    start: usize,
    len: usize,
    /// Bytes of the window that reads have written; only these are ever read.
    valid: usize,
    budget: Option<(Arc<ReadBudget>, u64)>,
    pool: Option<Arc<BufferPool>>,
}

impl ReadBuf {
    /// A buffer of `len` bytes whose start is aligned to `align` (a power of
    /// two), from `pool` if it has one, returned to it when dropped.
    pub fn new(len: usize, align: usize, pool: Option<Arc<BufferPool>>) -> ReadBuf {
        debug_assert!(align.is_power_of_two());
        let mem = match &pool {
            Some(p) => p.take(len + align),
            None => allocate(len + align),
        };
        let addr = mem.as_ptr() as usize;
        let start = addr.next_multiple_of(align) - addr;
        ReadBuf {
            mem,
            start,
            len,
            valid: 0,
            budget: None,
            pool,
        }
    }

    /// Counts this buffer's length against `budget` until it is dropped (the
    /// caller has acquired the bytes).
    pub fn charge(&mut self, budget: Arc<ReadBudget>) {
        self.budget = Some((budget, self.len as u64));
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The start of the aligned window, for reads to write into. Writing
    /// through it does not make bytes readable; see `into_bytes`.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.mem[self.start..].as_mut_ptr().cast()
    }

    /// Exposes the first `valid` bytes of the window as `Bytes`.
    ///
    /// # Safety
    /// Every one of the first `valid` bytes of the window has been written
    /// (by completed reads), and nothing writes the buffer any more.
    pub unsafe fn into_bytes(mut self, valid: usize) -> Bytes {
        assert!(valid <= self.len, "valid bytes beyond the buffer");
        self.valid = valid;
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ReadBuf {
    fn as_ref(&self) -> &[u8] {
        let window = &self.mem[self.start..self.start + self.valid];
        // SAFETY: `valid` is only set by `into_bytes`, whose caller guarantees
        // these bytes were written; MaybeUninit<u8> has the layout of u8.
        unsafe { std::slice::from_raw_parts(window.as_ptr().cast::<u8>(), window.len()) }
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            // Nothing reads the memory again before a read writes it, so its
            // stale contents never show (`valid` starts at 0).
            pool.put(std::mem::take(&mut self.mem));
        }
        if let Some((budget, n)) = self.budget.take() {
            budget.release(n);
        }
    }
}

#[cfg(feature = "object-store")]
pub use landing::{Landing, Slot};

/// Buffers that an object store's ranged GETs write into (`remote.rs`).
#[cfg(feature = "object-store")]
mod landing {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::ReadBuf;

    /// A read buffer that several writers fill at once from any thread, each
    /// through the `Slot` of its own range (an object store's ranged GETs, one
    /// per piece of an extent); its bytes become readable once every slot is
    /// dropped and the whole buffer was written (`finish`). A slot holds the
    /// buffer alive, so a reader that gives up midway never frees memory a
    /// writer still writes.
    #[derive(Debug)]
    pub struct Landing {
        buf: ReadBuf,
        ptr: *mut u8,
        written: std::sync::atomic::AtomicUsize,
    }

    // SAFETY: the memory behind `ptr` is written only through slots, whose
    // ranges `Landing::new` checked to be disjoint, each slot owned by one thread
    // at a time (`&mut self`), and read only by `finish`, once no slot exists.
    unsafe impl Send for Landing {}
    // SAFETY: as above; `&Landing` gives no access to the memory.
    unsafe impl Sync for Landing {}

    /// The right to write one range of a `Landing`, front to back.
    #[derive(Debug)]
    pub struct Slot {
        landing: Arc<Landing>,
        at: usize,
        end: usize,
    }

    impl Landing {
        /// The buffer and one slot per range (disjoint, within the buffer: an
        /// overlap or a range past its end is a bug of the caller and panics).
        pub fn new(
            mut buf: ReadBuf,
            ranges: impl Iterator<Item = std::ops::Range<usize>>,
        ) -> (Arc<Landing>, Vec<Slot>) {
            let mut ranges: Vec<_> = ranges.collect();
            let mut sorted = ranges.clone();
            sorted.sort_by_key(|r| r.start);
            let mut end = 0;
            for r in &sorted {
                assert!(r.start >= end && r.start <= r.end, "slots overlap");
                end = r.end;
            }
            assert!(end <= buf.len(), "a slot lies past the buffer");
            let ptr = buf.as_mut_ptr();
            let landing = Arc::new(Landing {
                buf,
                ptr,
                written: Default::default(),
            });
            let slots = ranges
                .drain(..)
                .map(|r| Slot {
                    landing: landing.clone(),
                    at: r.start,
                    end: r.end,
                })
                .collect();
            (landing, slots)
        }

        /// The buffer's bytes, once no slot exists and every byte was written;
        /// else the landing back.
        pub fn finish(this: Arc<Landing>) -> Result<Bytes, Arc<Landing>> {
            let landing = Arc::try_unwrap(this)?;
            let len = landing.buf.len();
            if landing.written.into_inner() != len {
                return Err(Arc::new(Landing {
                    written: len.into(),
                    ..landing
                }));
            }
            // SAFETY: every byte of the buffer was written (the slots' ranges
            // are disjoint and their writes add up to its length), and no slot,
            // hence no writer, is left.
            Ok(unsafe { landing.buf.into_bytes(len) })
        }
    }

    impl Slot {
        /// Writes `bytes` after what this slot wrote before; `Err` (nothing
        /// written) when they do not fit in its range.
        pub fn write(&mut self, bytes: &[u8]) -> Result<(), ()> {
            if bytes.len() > self.end - self.at {
                return Err(());
            }
            // SAFETY: `[at, at + len)` lies in this slot's range (checked above),
            // inside the buffer (`Landing::new`); no other slot writes it and
            // nothing reads the buffer while this slot exists.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.landing.ptr.add(self.at),
                    bytes.len(),
                )
            };
            self.at += bytes.len();
            self.landing
                .written
                .fetch_add(bytes.len(), std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "object-store")]
    #[test]
    fn a_landing_is_readable_once_every_slot_filled_its_range() {
        let (landing, mut slots) =
            Landing::new(ReadBuf::new(10, 64, None), [6..10, 0..6].into_iter());
        let mut second = slots.pop().unwrap();
        let mut first = slots.pop().unwrap();
        // From another thread, as the GETs write.
        std::thread::scope(|s| {
            s.spawn(|| {
                first.write(b"gh").unwrap();
                first.write(b"ij").unwrap();
                assert!(first.write(b"k").is_err(), "past its range");
            });
        });
        second.write(b"abc").unwrap();
        drop(first);
        // A slot still exists: not readable.
        let landing = Landing::finish(landing).unwrap_err();
        second.write(b"def").unwrap();
        drop(second);
        assert_eq!(&Landing::finish(landing).unwrap()[..], b"abcdefghij");
        // A range never written: refused even with no slot left.
        let (landing, slots) = Landing::new(ReadBuf::new(4, 64, None), std::iter::once(0..4));
        drop(slots);
        assert!(Landing::finish(landing).is_err());
    }

    #[cfg(feature = "object-store")]
    #[test]
    #[should_panic(expected = "slots overlap")]
    fn overlapping_slots_are_refused() {
        let _ = Landing::new(ReadBuf::new(10, 64, None), [0..6, 5..10].into_iter());
    }

    #[test]
    fn aligned_and_exposes_only_written_bytes() {
        let mut b = ReadBuf::new(10_000, 4096, None);
        assert_eq!(b.as_mut_ptr() as usize % 4096, 0);
        let p = b.as_mut_ptr();
        // SAFETY: p points to 10_000 bytes owned by `b`; 100 bytes written.
        unsafe { std::ptr::write_bytes(p, 7, 100) };
        // SAFETY: the first 100 bytes were written above.
        let bytes = unsafe { b.into_bytes(100) };
        assert_eq!(bytes.len(), 100);
        assert!(bytes.iter().all(|&x| x == 7));
    }

    #[test]
    fn budget_is_returned_when_the_last_slice_drops() {
        let budget = ReadBudget::new(1000);
        assert!(budget.try_acquire(800));
        assert!(!budget.try_acquire(800));
        let mut b = ReadBuf::new(800, 64, None);
        b.charge(budget.clone());
        let p = b.as_mut_ptr();
        // SAFETY: 800 bytes owned by `b`, all written.
        unsafe { std::ptr::write_bytes(p, 1, 800) };
        // SAFETY: all 800 bytes written above.
        let bytes = unsafe { b.into_bytes(800) };
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert!(!budget.try_acquire(800));
        drop(slice);
        assert!(budget.try_acquire(800));
    }

    #[test]
    fn pooled_buffers_are_reused() {
        let pool = BufferPool::new();
        let _ingest = pool.begin_ingest(0);
        let mut a = ReadBuf::new(1000, 4096, Some(pool.clone()));
        let p = a.as_mut_ptr();
        drop(a);
        let mut b = ReadBuf::new(5000, 4096, Some(pool.clone()));
        assert_eq!(b.as_mut_ptr(), p, "the freed buffer is handed out again");
        assert_eq!(b.as_mut_ptr() as usize % 4096, 0);
    }

    #[test]
    fn prewarmed_buffers_serve_extents_up_to_their_size() {
        let mb = 1024 * 1024;
        let pool = BufferPool::new();
        assert_eq!(
            pool.prewarm(70 * mb, 32 * mb),
            64 * mb,
            "two whole pieces fit in 70 MiB"
        );
        assert_eq!(pool.prewarm(70 * mb, 32 * mb), 0, "full already");
        let _ingest = pool.begin_ingest(70 * mb);
        let a = ReadBuf::new(20 * mb, 4096, Some(pool.clone()));
        let b = ReadBuf::new(30 * mb, 4096, Some(pool.clone()));
        assert_eq!(pool.free_bytes(), 0, "both taken from the pool");
        let c = ReadBuf::new(40 * mb, 4096, Some(pool.clone()));
        assert_eq!(pool.free_bytes(), 0);
        drop((a, b, c));
        assert_eq!(
            pool.free_bytes(),
            64 * mb + 48 * mb,
            "the larger one was new"
        );
        assert_eq!(
            pool.prewarm(70 * mb, 32 * mb),
            0,
            "not while an ingest runs"
        );
    }

    #[test]
    fn the_last_ingest_to_end_trims_the_pool_to_what_it_keeps() {
        let mb = 1024 * 1024;
        let pool = BufferPool::new();
        let first = pool.begin_ingest(20 * mb);
        let second = pool.begin_ingest(20 * mb);
        let bufs: Vec<ReadBuf> = (0..4)
            .map(|_| ReadBuf::new(9 * mb, 4096, Some(pool.clone())))
            .collect();
        drop(bufs);
        // While an ingest runs every freed buffer stays (4 x 16 MiB granules).
        assert_eq!(pool.free_bytes(), 64 * mb);
        drop(first);
        assert_eq!(pool.free_bytes(), 64 * mb, "another ingest still runs");
        drop(second);
        assert_eq!(pool.free_bytes(), 16 * mb, "trimmed to what fits in 20 MiB");
        // Between ingests a freed buffer stays only if it fits.
        let a = ReadBuf::new(1000, 4096, Some(pool.clone()));
        let b = ReadBuf::new(1000, 4096, Some(pool.clone()));
        assert_eq!(pool.free_bytes(), 0);
        drop(a);
        drop(b);
        assert_eq!(
            pool.free_bytes(),
            16 * mb,
            "b's 8 MiB would pass 20 MiB: freed"
        );
    }
}
