//! File I/O engines: io_uring (several large reads or writes in flight) and
//! plain `pread`/`pwrite` (one at a time, for machines where io_uring is
//! disabled or blocked). Ingest reads Parquet with them (`ingest/read.rs`);
//! spilling writes and reads its files with them (`pool/spill.rs`).
//!
//! Both take raw destination pointers because an io_uring read outlives the
//! call that starts it: the kernel writes the buffer until its completion is
//! reaped. The scheduler (`read.rs`) owns the buffers and keeps each one alive
//! and untouched from `start` until its completion comes out of `wait`; an
//! engine that is dropped with reads in flight first waits for them (`drain`),
//! and if it cannot, the scheduler leaks the buffers rather than free memory
//! the kernel may still write (see foyer-rs/foyer#1286).

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, RawFd};

use io_uring::{opcode, types, IoUring};

/// A finished read: the tag given to `start`, and bytes read or the error.
pub type Completion = (u64, io::Result<usize>);

/// A way to read file ranges into memory.
pub trait Engine {
    /// Reads that may be in flight at once.
    fn queue_depth(&self) -> usize;

    fn in_flight(&self) -> usize;

    /// Starts reading `len` bytes at `offset` of `fd` into `dst`; the result
    /// comes out of `wait` with `tag`.
    ///
    /// # Safety
    /// `dst` is valid for writes of `len` bytes, and neither that memory nor
    /// `fd` is freed, closed, read or written by anyone else until the
    /// completion with `tag` has been returned by `wait` (or `drain` returned
    /// true).
    unsafe fn start(
        &mut self,
        fd: BorrowedFd<'_>,
        dst: *mut u8,
        len: usize,
        offset: u64,
        tag: u64,
    ) -> io::Result<()>;

    /// Starts writing `len` bytes from `src` at `offset` of `fd`; the result
    /// (bytes written) comes out of `wait` with `tag`.
    ///
    /// # Safety
    /// `src` is valid for reads of `len` bytes, and neither that memory nor
    /// `fd` is freed, closed or written by anyone else until the completion
    /// with `tag` has been returned by `wait` (or `drain` returned true).
    unsafe fn start_write(
        &mut self,
        fd: BorrowedFd<'_>,
        src: *const u8,
        len: usize,
        offset: u64,
        tag: u64,
    ) -> io::Result<()>;

    /// Waits for at least one completion (there must be reads in flight) and
    /// appends every available completion to `out`.
    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()>;

    /// Waits for every read in flight, discarding results. False if that is
    /// not possible: the caller must then never free the buffers.
    fn drain(&mut self) -> bool;
}

/// Plain positional reads on the calling thread.
#[derive(Debug, Default)]
pub struct Pread {
    done: VecDeque<Completion>,
}

impl Engine for Pread {
    fn queue_depth(&self) -> usize {
        1
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    unsafe fn start(
        &mut self,
        fd: BorrowedFd<'_>,
        dst: *mut u8,
        len: usize,
        offset: u64,
        tag: u64,
    ) -> io::Result<()> {
        // SAFETY: the caller guarantees `dst` is valid for `len` bytes and not
        // used by anyone else until this completion is returned; the read below
        // finishes before `start` returns.
        let buf = unsafe { std::slice::from_raw_parts_mut(dst.cast::<MaybeUninit<u8>>(), len) };
        let result = loop {
            match rustix::io::pread(fd, &mut *buf, offset) {
                Ok((read, _)) => break Ok(read.len()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => break Err(io::Error::from(e)),
            }
        };
        self.done.push_back((tag, result));
        Ok(())
    }

    unsafe fn start_write(
        &mut self,
        fd: BorrowedFd<'_>,
        src: *const u8,
        len: usize,
        offset: u64,
        tag: u64,
    ) -> io::Result<()> {
        // SAFETY: the caller guarantees `src` is valid for `len` bytes until
        // this completion is returned; the write finishes before we return.
        let buf = unsafe { std::slice::from_raw_parts(src, len) };
        let result = loop {
            match rustix::io::pwrite(fd, buf, offset) {
                Ok(n) => break Ok(n),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => break Err(io::Error::from(e)),
            }
        };
        self.done.push_back((tag, result));
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        out.extend(self.done.drain(..));
        Ok(())
    }

    fn drain(&mut self) -> bool {
        self.done.clear();
        true
    }
}

/// io_uring reads, submitted in batches and reaped as they complete.
pub struct Uring {
    ring: IoUring,
    queue_depth: usize,
    in_flight: usize,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Uring {{ queue_depth: {}, in_flight: {} }}",
            self.queue_depth, self.in_flight
        )
    }
}

impl Uring {
    /// A ring for `queue_depth` reads. Fails where io_uring is disabled
    /// (`kernel.io_uring_disabled`) or filtered (container seccomp profiles).
    pub fn new(queue_depth: usize) -> io::Result<Uring> {
        let entries = u32::try_from(queue_depth.next_power_of_two()).unwrap_or(u32::MAX);
        let ring = IoUring::new(entries)?;
        Ok(Uring {
            ring,
            queue_depth,
            in_flight: 0,
        })
    }

    /// Queues `entry`. The queue has room: callers keep in_flight <=
    /// queue_depth <= ring entries.
    ///
    /// # Safety
    /// The memory and descriptor `entry` names stay valid and untouched until
    /// its completion is reaped by `wait` or `drain`.
    unsafe fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: the caller's contract above.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.in_flight += 1;
        Ok(())
    }

    fn reap(&mut self, out: Option<&mut Vec<Completion>>) {
        let mut out = out;
        for cqe in self.ring.completion() {
            self.in_flight = self.in_flight.saturating_sub(1);
            if let Some(out) = out.as_deref_mut() {
                let res = cqe.result();
                let result = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                };
                out.push((cqe.user_data(), result));
            }
        }
    }
}

impl Engine for Uring {
    fn queue_depth(&self) -> usize {
        self.queue_depth
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    unsafe fn start(
        &mut self,
        fd: BorrowedFd<'_>,
        dst: *mut u8,
        len: usize,
        offset: u64,
        tag: u64,
    ) -> io::Result<()> {
        let len = u32::try_from(len).map_err(|_| io::Error::other("read larger than 4 GiB"))?;
        let raw: RawFd = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let entry = opcode::Read::new(types::Fd(raw), dst, len)
            .offset(offset)
            .build()
            .user_data(tag);
        // SAFETY: the entry points at `len` bytes at `dst` and at `fd`, which the
        // caller keeps alive and unused until this tag's completion is reaped
        // by `wait` or `drain` (the contract of `start`).
        unsafe { self.push(&entry) }
    }

    unsafe fn start_write(
        &mut self,
        fd: BorrowedFd<'_>,
        src: *const u8,
        len: usize,
        offset: u64,
        tag: u64,
    ) -> io::Result<()> {
        let len = u32::try_from(len).map_err(|_| io::Error::other("write larger than 4 GiB"))?;
        let raw: RawFd = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let entry = opcode::Write::new(types::Fd(raw), src, len)
            .offset(offset)
            .build()
            .user_data(tag);
        // SAFETY: as in `start`: `src` and `fd` stay alive and untouched until
        // this tag's completion is reaped (the contract of `start_write`).
        unsafe { self.push(&entry) }
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.reap(Some(out));
        Ok(())
    }

    fn drain(&mut self) -> bool {
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(self.in_flight) {
                Ok(_) => self.reap(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}
