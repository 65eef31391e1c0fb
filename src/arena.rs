//! The shared-memory arena: one memfd, mapped once, its pages allocated ahead and
//! reused across objects.
//!
//! Why: a put is only as fast as memcpy if the destination pages already exist
//! (DESIGN.md: 1 GB into fresh 4 KiB pages costs 0.88 s of faults, into
//! pre-allocated hugepages 0.08 s). So the arena allocates backing pages with
//! `fallocate` the first time a range is handed out and never gives them back on
//! the put path.
//!
//! Kinds of memory, tried in this order under `--hugepages auto`:
//! 1. `hugetlb`: `memfd_create(MFD_HUGETLB)`, mapped without `MAP_NORESERVE` so the
//!    kernel reserves every page at `mmap` time: a shortage fails here, at start,
//!    never as a SIGBUS later.
//! 2. `transparent-hugepages`: a shmem memfd with `MADV_HUGEPAGE`, when
//!    `/sys/kernel/mm/transparent_hugepage/shmem_enabled` allows it.
//! 3. `4k-pages`: a plain shmem memfd.
//!
//! This file and `client.rs` are the only places that map memory.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{FallocateFlags, MemfdFlags};
use rustix::mm::{Advice, MapFlags, ProtFlags};

/// Page size of hugetlb memory (the default hugepage size on x86_64 and aarch64).
pub const HUGEPAGE_BYTES: u64 = 2 * 1024 * 1024;
/// Base page size.
pub const PAGE_BYTES: u64 = 4096;
/// Granularity at which the arena tracks which pages are already allocated.
const CHUNK_BYTES: u64 = HUGEPAGE_BYTES;
/// Ranges to populate at least this large are split over several threads.
const PARALLEL_POPULATE_BYTES: u64 = 32 << 20;
/// Most threads one populate uses.
const POPULATE_THREADS: usize = 4;
/// Environment variable: how many threads a client's populate may use (`1`:
/// one, as before; default: the cores, at most `POPULATE_THREADS`).
pub const POPULATE_THREADS_ENV: &str = "ARROWPOOL_POPULATE_THREADS";

fn populate_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var(POPULATE_THREADS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(POPULATE_THREADS)
            })
            .max(1)
    })
}

/// What kind of memory backs the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    Hugetlb = 0,
    TransparentHugepages = 1,
    SmallPages = 2,
}

impl MemoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Hugetlb => "hugetlb",
            MemoryKind::TransparentHugepages => "transparent-hugepages",
            MemoryKind::SmallPages => "4k-pages",
        }
    }

    pub fn from_u8(v: u8) -> Option<MemoryKind> {
        match v {
            0 => Some(MemoryKind::Hugetlb),
            1 => Some(MemoryKind::TransparentHugepages),
            2 => Some(MemoryKind::SmallPages),
            _ => None,
        }
    }

    /// Mapping granularity: the alignment a client's mapping needs.
    pub fn page_bytes(self) -> u64 {
        match self {
            MemoryKind::Hugetlb => HUGEPAGE_BYTES,
            _ => PAGE_BYTES,
        }
    }

    /// Alignment of objects of `LARGE_OBJECT_BYTES` or more: the hugepage size
    /// where hugepages back the arena (so a large object takes whole pages),
    /// else the small page, which wastes nothing.
    pub fn large_object_align(self) -> u64 {
        match self {
            MemoryKind::Hugetlb | MemoryKind::TransparentHugepages => HUGEPAGE_BYTES,
            MemoryKind::SmallPages => PAGE_BYTES,
        }
    }
}

/// `--hugepages` policy (the binary maps its flag onto it: no clap here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugepageMode {
    /// Use reserved hugepages if there are enough, else transparent hugepages, else 4 KiB pages.
    Auto,
    /// Refuse to start without reserved hugepages.
    Require,
    /// Never use reserved hugepages (transparent hugepages are still tried).
    Off,
}

/// Why the arena could not be created or grown.
#[derive(Debug)]
pub enum ArenaError {
    /// Capacity is zero or does not fit in the address space.
    BadCapacity(u64),
    /// `--hugepages require` and the reserved pool is too small.
    HugepagesUnavailable {
        requested_bytes: u64,
        reason: String,
    },
    /// A system call failed.
    Sys {
        call: &'static str,
        err: rustix::io::Errno,
    },
    /// `fallocate` could not allocate pages for an object (memory exhausted).
    Populate {
        offset: u64,
        len: u64,
        err: rustix::io::Errno,
    },
}

impl std::fmt::Display for ArenaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArenaError::BadCapacity(c) => write!(f, "arena capacity of {c} bytes is not usable; pass --memory like 2G"),
            ArenaError::HugepagesUnavailable { requested_bytes, reason } => write!(
                f,
                "hugepages required but unavailable for {} ({reason}); reserve them with \
                 `echo {} > /proc/sys/vm/nr_hugepages` or use --hugepages auto",
                crate::util::human_bytes(*requested_bytes),
                requested_bytes.div_ceil(HUGEPAGE_BYTES)
            ),
            ArenaError::Sys { call, err } => write!(f, "{call} failed: {err}"),
            ArenaError::Populate { offset, len, err } => write!(
                f,
                "could not allocate {} of memory at arena offset {offset}: {err}; the machine is out of memory \
                 (lower --memory or free memory)",
                crate::util::human_bytes(*len)
            ),
        }
    }
}

impl std::error::Error for ArenaError {}

fn sys(call: &'static str) -> impl FnOnce(rustix::io::Errno) -> ArenaError {
    move |err| ArenaError::Sys { call, err }
}

/// A shared mapping of (part of) an arena fd. Unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// One bit per 2 MiB chunk whose page tables this process has populated
    /// for writing (see `populate_write_once`).
    populated: std::sync::Mutex<Vec<u64>>,
}

// SAFETY: the mapping is plain shared memory; concurrent access is coordinated by
// the store's protocol (only the creating connection writes an unsealed range,
// sealed ranges are read-only). The pointer itself may move between threads.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the base pointer and length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared, read-only or read-write.
    pub fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> Result<Mapping, ArenaError> {
        if len == 0 {
            return Err(ArenaError::BadCapacity(0));
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: we ask the kernel for a fresh mapping (null hint, no MAP_FIXED), so no
        // existing memory is replaced. The mapping lives until `Drop` unmaps it, and
        // every pointer handed out is derived from `self` and bounded by `len`.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }
                .map_err(sys("mmap"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(ArenaError::Sys {
            call: "mmap",
            err: rustix::io::Errno::FAULT,
        })?;
        let chunks = (len as u64).div_ceil(CHUNK_BYTES);
        let populated = std::sync::Mutex::new(vec![0; chunks.div_ceil(64) as usize]);
        Ok(Mapping {
            ptr,
            len,
            populated,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes at `[offset, offset + len)`, or `None` when out of bounds.
    ///
    /// Readers call this only on sealed ranges they hold a lease on, which no one
    /// writes (see `store.rs`), so the shared slice does not alias a writer.
    pub fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: bounds checked above; the mapping outlives the returned borrow.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(offset as usize), len as usize)
        })
    }

    /// Mutable bytes at `[offset, offset + len)` of a writable mapping.
    ///
    /// # Safety
    /// The caller must own this range exclusively: an unsealed object created by
    /// this process, which no reader can see until it is sealed. The mapping must
    /// have been created writable.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, offset: u64, len: u64) -> Option<&mut [u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: bounds checked; exclusivity is the caller's contract above.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset as usize), len as usize)
        })
    }

    /// Pre-faults the page tables of a range about to be written
    /// (`MADV_POPULATE_WRITE`), so the copy that follows runs at memcpy speed
    /// instead of taking one fault per page. Best effort: old kernels lack it.
    pub fn populate_write(&self, offset: u64, len: u64) {
        self.advise(offset, len, Advice::LinuxPopulateWrite);
    }

    /// `populate_write` for the 2 MiB chunks of the range not populated before
    /// through this mapping. `MADV_POPULATE_WRITE` walks every page even when it
    /// is mapped already, and pages stay mapped once written (the arena never
    /// gives them back on the put path), so repeated puts into reused memory skip
    /// the walk. A stale record can only cost page faults, never correctness.
    pub fn populate_write_once(&self, offset: u64, len: u64) {
        for (start, end) in self.unpopulated(offset, len) {
            self.populate_write(start, end - start);
        }
    }

    /// Builds this mapping's page tables for the 2 MiB chunks of `[offset,
    /// offset + len)` whose pages all exist already (the server's
    /// preallocated region, pages of earlier objects). Pages that do not exist
    /// are left alone: populating them would allocate them, committing memory
    /// the server did not. A writer's client calls this on a thread of its
    /// own after connecting, so that its first put into that memory copies at
    /// memcpy speed instead of building page tables first. Returns the bytes
    /// populated.
    pub fn populate_resident_range(&self, offset: u64, len: u64) -> u64 {
        let end = offset.saturating_add(len).min(self.len as u64);
        let page = rustix::param::page_size();
        let mut residency = vec![0u8; (CHUNK_BYTES as usize).div_ceil(page)];
        let mut done = 0;
        let mut chunk = offset / CHUNK_BYTES;
        while chunk * CHUNK_BYTES < end {
            let start = chunk * CHUNK_BYTES;
            chunk += 1;
            let n = CHUNK_BYTES.min(self.len as u64 - start);
            let pages = (n as usize).div_ceil(page);
            // SAFETY: `[start, start + n)` lies inside this mapping (chunks are
            // cut from its length; `start` is page aligned) and `residency` has
            // a byte per page of it; mincore only reads the kernel's tables.
            let r = unsafe {
                libc::mincore(
                    self.ptr.as_ptr().add(start as usize).cast(),
                    n as usize,
                    residency.as_mut_ptr(),
                )
            };
            if r != 0 || residency[..pages].iter().any(|b| b & 1 == 0) {
                continue;
            }
            for (s, e) in self.unpopulated(start, n) {
                self.populate_write(s, e - s);
                done += e - s;
            }
        }
        done
    }

    /// `populate_write_once` on several threads for large ranges (see
    /// `populate_runs`): for a writer with the cores to itself (a client's put),
    /// not for the server's decoders, which already populate side by side.
    pub fn populate_write_once_parallel(&self, offset: u64, len: u64) {
        let runs = self.unpopulated(offset, len);
        self.populate_runs(&runs);
    }

    /// The runs of `[offset, offset + len)` in chunks not populated before,
    /// marked populated now.
    fn unpopulated(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        if len == 0 {
            return Vec::new();
        }
        let chunks = (self.len as u64).div_ceil(CHUNK_BYTES);
        let first = offset / CHUNK_BYTES;
        let last = ((offset + len - 1) / CHUNK_BYTES).min(chunks.saturating_sub(1));
        let is_set = |bits: &[u64], c: u64| bits[(c / 64) as usize] & (1 << (c % 64)) != 0;
        let mut runs = Vec::new();
        {
            let mut bits = self.populated.lock().unwrap_or_else(|p| p.into_inner());
            let mut chunk = first;
            while chunk <= last {
                if is_set(&bits, chunk) {
                    chunk += 1;
                    continue;
                }
                let run_start = chunk;
                while chunk <= last && !is_set(&bits, chunk) {
                    bits[(chunk / 64) as usize] |= 1 << (chunk % 64);
                    chunk += 1;
                }
                let start = (run_start * CHUNK_BYTES).max(offset);
                runs.push((start, (chunk * CHUNK_BYTES).min(offset + len)));
            }
        }
        // madvise outside the lock (by the callers), so threads writing
        // different ranges populate in parallel.
        runs
    }

    /// Populates `runs` (`[start, end)` offsets). Past `PARALLEL_POPULATE_BYTES`
    /// the work is cut into equal shares on up to `POPULATE_THREADS` threads: on
    /// 4 KiB pages building a new writer's page tables costs more than the copy
    /// that follows, and the kernel builds tables for different ranges at once.
    fn populate_runs(&self, runs: &[(u64, u64)]) {
        let total: u64 = runs.iter().map(|(s, e)| e - s).sum();
        let threads = populate_threads() as u64;
        if total < PARALLEL_POPULATE_BYTES || threads < 2 {
            for &(start, end) in runs {
                self.populate_write(start, end - start);
            }
            return;
        }
        let share = total.div_ceil(threads);
        let mut parts: Vec<Vec<(u64, u64)>> = vec![Vec::new()];
        let mut room = share;
        for &(mut start, end) in runs {
            while start < end {
                let n = (end - start).min(room);
                parts
                    .last_mut()
                    .expect("one part at least")
                    .push((start, start + n));
                start += n;
                room -= n;
                if room == 0 && (parts.len() as u64) < threads {
                    parts.push(Vec::new());
                    room = share;
                }
            }
        }
        std::thread::scope(|scope| {
            for part in &parts[1..] {
                scope.spawn(move || {
                    for &(start, end) in part {
                        self.populate_write(start, end - start);
                    }
                });
            }
            for &(start, end) in &parts[0] {
                self.populate_write(start, end - start);
            }
        });
    }

    /// Asks for transparent hugepages on the whole mapping. Best effort.
    pub fn advise_hugepages(&self) {
        self.advise(0, self.len as u64, Advice::LinuxHugepage);
    }

    fn advise(&self, offset: u64, len: u64, advice: Advice) {
        let start = offset & !(PAGE_BYTES - 1);
        let end = (offset + len).min(self.len as u64);
        if end <= start {
            return;
        }
        // SAFETY: the range lies inside our mapping (clamped above); madvise with
        // these advices does not change the contents or invalidate pointers.
        let _ = unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().add(start as usize).cast(),
                (end - start) as usize,
                advice,
            )
        };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we created this mapping in `map` with exactly this base and length,
        // and no borrow of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The server's arena: the memfd, a read-only descriptor for readers, the
/// server's own read-write mapping, and which pages are already allocated.
#[derive(Debug)]
pub struct Arena {
    fd: OwnedFd,
    read_only_fd: OwnedFd,
    mapping: Mapping,
    kind: MemoryKind,
    len: u64,
    /// One bit per 2 MiB chunk: set once `fallocate` has allocated its pages.
    populated: std::sync::Mutex<Vec<u64>>,
}

impl Arena {
    /// Creates an arena of at least `capacity` bytes (rounded up to the page size).
    /// With `prefault`, all pages are allocated now instead of on first use.
    pub fn create(capacity: u64, mode: HugepageMode, prefault: bool) -> Result<Arena, ArenaError> {
        if capacity == 0 || capacity > isize::MAX as u64 / 2 {
            return Err(ArenaError::BadCapacity(capacity));
        }
        let mut hugetlb_reason = String::from("--hugepages off");
        if mode != HugepageMode::Off {
            match Self::create_hugetlb(capacity) {
                Ok(arena) => return arena.finish(prefault),
                Err(e) if mode == HugepageMode::Require => {
                    return Err(ArenaError::HugepagesUnavailable {
                        requested_bytes: capacity,
                        reason: e.to_string(),
                    });
                }
                Err(e) => hugetlb_reason = e.to_string(),
            }
        }
        let arena = Self::create_shmem(capacity)?;
        eprintln!(
            "arrowpoold: reserved hugepages not used ({hugetlb_reason}); arena uses {}",
            arena.kind.as_str()
        );
        arena.finish(prefault)
    }

    /// An arena in the file at `path` (on tmpfs: `--state-dir`), created
    /// with `capacity` bytes (rounded up to 2 MiB) when missing or of another
    /// size, else opened as it is, contents and allocated pages kept: the
    /// arena of a server that stopped or died. Returns whether the file was
    /// there with this size. Mapped as a memfd is; 4 KiB pages (transparent
    /// hugepages of a tmpfs file are the mount's `huge=` option, not asked for).
    pub fn open_file(
        path: &std::path::Path,
        capacity: u64,
        hugetlb: bool,
    ) -> Result<(Arena, bool), ArenaError> {
        if capacity == 0 || capacity > isize::MAX as u64 / 2 {
            return Err(ArenaError::BadCapacity(capacity));
        }
        let len = capacity.div_ceil(HUGEPAGE_BYTES) * HUGEPAGE_BYTES;
        let fd = rustix::fs::open(
            path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CREATE | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .map_err(sys("open arena file"))?;
        let existing = rustix::fs::fstat(&fd)
            .map_err(sys("fstat arena file"))?
            .st_size as u64;
        let kept = existing == len;
        if !kept {
            // Another size (or new): nothing in it can be used; start empty.
            rustix::fs::ftruncate(&fd, 0).map_err(sys("ftruncate"))?;
            rustix::fs::ftruncate(&fd, len).map_err(sys("ftruncate"))?;
        }
        if !hugetlb {
            let mapping = Mapping::map(fd.as_fd(), len as usize, true)?;
            return Ok((
                Self::assemble(fd, mapping, MemoryKind::SmallPages, len)?,
                kept,
            ));
        }
        // A file on hugetlbfs: its pages are reserved at mapping (no
        // MAP_NORESERVE), or the mapping fails; pages it holds already (the
        // tables of the server before) are its own.
        let mapping = Mapping::map(fd.as_fd(), len as usize, true).map_err(|e| match e {
            ArenaError::Sys { err, .. } if err == rustix::io::Errno::NOMEM => ArenaError::Sys {
                call: "mmap of the hugetlbfs arena file (not enough free reserved hugepages in vm.nr_hugepages)",
                err,
            },
            e => e,
        })?;
        Ok((Self::assemble(fd, mapping, MemoryKind::Hugetlb, len)?, kept))
    }

    fn create_hugetlb(capacity: u64) -> Result<Arena, ArenaError> {
        let len = capacity.div_ceil(HUGEPAGE_BYTES) * HUGEPAGE_BYTES;
        let fd = rustix::fs::memfd_create(
            "arrowpool-arena",
            MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB | MemfdFlags::HUGE_2MB,
        )
        .map_err(sys("memfd_create(MFD_HUGETLB)"))?;
        rustix::fs::ftruncate(&fd, len).map_err(sys("ftruncate"))?;
        // No MAP_NORESERVE: the kernel reserves all hugepages now or fails with ENOMEM.
        let mapping = Mapping::map(fd.as_fd(), len as usize, true).map_err(|e| match e {
            ArenaError::Sys { err, .. } if err == rustix::io::Errno::NOMEM => ArenaError::Sys {
                call: "mmap of hugetlb memfd (not enough reserved hugepages in vm.nr_hugepages)",
                err,
            },
            e => e,
        })?;
        Self::assemble(fd, mapping, MemoryKind::Hugetlb, len)
    }

    fn create_shmem(capacity: u64) -> Result<Arena, ArenaError> {
        let len = capacity.div_ceil(HUGEPAGE_BYTES) * HUGEPAGE_BYTES;
        let fd = rustix::fs::memfd_create("arrowpool-arena", MemfdFlags::CLOEXEC)
            .map_err(sys("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len).map_err(sys("ftruncate"))?;
        let mapping = Mapping::map(fd.as_fd(), len as usize, true)?;
        let kind = if shmem_thp_allowed() {
            mapping.advise_hugepages();
            MemoryKind::TransparentHugepages
        } else {
            MemoryKind::SmallPages
        };
        Self::assemble(fd, mapping, kind, len)
    }

    fn assemble(
        fd: OwnedFd,
        mapping: Mapping,
        kind: MemoryKind,
        len: u64,
    ) -> Result<Arena, ArenaError> {
        // A second, read-only open file description of the same memfd for readers:
        // mmap(PROT_WRITE, MAP_SHARED) of it fails with EACCES.
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let read_only_fd = rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(sys("open read-only arena descriptor"))?;
        let chunks = len.div_ceil(CHUNK_BYTES) as usize;
        Ok(Arena {
            fd,
            read_only_fd,
            mapping,
            kind,
            len,
            populated: std::sync::Mutex::new(vec![0u64; chunks.div_ceil(64)]),
        })
    }

    fn finish(self, prefault: bool) -> Result<Arena, ArenaError> {
        if prefault {
            self.ensure_allocated(0, self.len)?;
        }
        Ok(self)
    }

    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn read_only_fd(&self) -> BorrowedFd<'_> {
        self.read_only_fd.as_fd()
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Makes sure the pages of `[offset, offset+len)` exist, allocating with
    /// `fallocate` those never allocated before. Called when a range is handed to
    /// a writer, so the writer's copy does not fault pages into existence; an
    /// allocation failure is an error reply here instead of a SIGBUS there.
    pub fn ensure_allocated(&self, offset: u64, len: u64) -> Result<(), ArenaError> {
        if len == 0 {
            return Ok(());
        }
        let first = offset / CHUNK_BYTES;
        let last = (offset + len - 1).min(self.len - 1) / CHUNK_BYTES;
        let mut bits = self.populated.lock().unwrap_or_else(|p| p.into_inner());
        let mut chunk = first;
        while chunk <= last {
            if bits[(chunk / 64) as usize] & (1 << (chunk % 64)) != 0 {
                chunk += 1;
                continue;
            }
            // A run of chunks not yet allocated: one fallocate for all of them.
            let run_start = chunk;
            while chunk <= last && bits[(chunk / 64) as usize] & (1 << (chunk % 64)) == 0 {
                chunk += 1;
            }
            let start = run_start * CHUNK_BYTES;
            let end = (chunk * CHUNK_BYTES).min(self.len);
            fallocate_retrying(&self.fd, start, end - start).map_err(|err| {
                ArenaError::Populate {
                    offset: start,
                    len: end - start,
                    err,
                }
            })?;
            for c in run_start..chunk {
                bits[(c / 64) as usize] |= 1 << (c % 64);
            }
        }
        Ok(())
    }

    /// Records that the pages of `[offset, offset + len)` exist already (the
    /// ranges of versions a restarted server found in its arena file): the 2
    /// MiB chunks the range covers whole are not given to `fallocate` again.
    pub fn mark_allocated(&self, offset: u64, len: u64) {
        let first = offset.div_ceil(CHUNK_BYTES);
        let end = (offset.saturating_add(len).min(self.len)) / CHUNK_BYTES;
        let mut bits = self.populated.lock().unwrap_or_else(|p| p.into_inner());
        for c in first..end {
            bits[(c / 64) as usize] |= 1 << (c % 64);
        }
    }

    /// Bytes of the arena whose pages are allocated.
    pub fn allocated_bytes(&self) -> u64 {
        let bits = self.populated.lock().unwrap_or_else(|p| p.into_inner());
        bits.iter().map(|w| w.count_ones() as u64).sum::<u64>() * CHUNK_BYTES
    }
}

/// `fallocate` that retries on EINTR. Allocating hugetlb pages is interruptible,
/// and io_uring task work pending on the calling thread interrupts it; the call
/// is idempotent for pages already allocated (each try makes progress), so
/// retrying is safe. Bounded, so a signal storm is an error, not a hang.
fn fallocate_retrying(fd: &OwnedFd, offset: u64, len: u64) -> Result<(), rustix::io::Errno> {
    const TRIES_MAX: usize = 100_000;
    for _ in 0..TRIES_MAX {
        match rustix::fs::fallocate(fd, FallocateFlags::empty(), offset, len) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other,
        }
    }
    Err(rustix::io::Errno::INTR)
}

/// Whether shmem (and so a plain memfd) may use transparent hugepages.
fn shmem_thp_allowed() -> bool {
    match std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled") {
        Ok(s) => ["[always]", "[within_size]", "[advise]", "[force]"]
            .iter()
            .any(|m| s.contains(m)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pages_arena_maps_and_populates() {
        let arena = Arena::create(8 * 1024 * 1024, HugepageMode::Off, false).unwrap();
        assert_ne!(arena.kind(), MemoryKind::Hugetlb);
        assert_eq!(arena.allocated_bytes(), 0);
        arena.ensure_allocated(3 * 1024 * 1024, 10).unwrap();
        assert_eq!(arena.allocated_bytes(), CHUNK_BYTES);
        arena.ensure_allocated(0, arena.len()).unwrap();
        assert_eq!(arena.allocated_bytes(), arena.len());
    }

    #[test]
    fn read_only_descriptor_cannot_be_mapped_writable() {
        let arena = Arena::create(4 * 1024 * 1024, HugepageMode::Off, false).unwrap();
        assert!(Mapping::map(arena.read_only_fd(), arena.len() as usize, true).is_err());
        let ro = Mapping::map(arena.read_only_fd(), arena.len() as usize, false).unwrap();
        // SAFETY: test owns the whole arena; nothing else writes it.
        unsafe { arena.mapping().slice_mut(100, 4).unwrap() }.copy_from_slice(b"abcd");
        assert_eq!(ro.slice(100, 4).unwrap(), b"abcd");
        assert!(ro.slice(arena.len() - 2, 4).is_none());
    }

    #[test]
    fn zero_capacity_is_an_error() {
        assert!(matches!(
            Arena::create(0, HugepageMode::Auto, false),
            Err(ArenaError::BadCapacity(0))
        ));
    }
}
