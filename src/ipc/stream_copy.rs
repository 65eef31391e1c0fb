//! Copies into the arena with non-temporal ("streaming") stores.
//!
//! A plain copy of a buffer into memory that is not in the cache first reads
//! every destination line (the store needs the line), so a copy of N bytes
//! moves 3N bytes through memory: N read from the source, N read from the
//! destination, N written back. Streaming stores write whole lines without
//! reading them: 2N. glibc's `memcpy` switches to them by itself above a
//! threshold derived from the last-level cache, but virtual machines often
//! report an enormous shared cache (480 MiB on the 2-core VM measured here),
//! which puts the threshold beyond any single Arrow buffer, and even on bare
//! metal a table is copied buffer by buffer, each under it.
//!
//! Data copied into the arena is not read again soon by the writer (readers
//! are other processes, later), so the writers of large tables (the client's
//! put, ingest, Flight) copy each buffer of `STREAM_MIN_BYTES` or more this
//! way. Measured on the 2-core VM (`examples/put_probe`, 1.04 GB table, two
//! copy threads): steady put 85-94 ms against 132-157 ms with plain copies
//! (docs/OPERATING.md, "A writer's copy"). `ARROWPOOL_STREAMING_STORES=0`
//! turns it off (plain copies).
//!
//! Only x86-64 has them here (SSE2, part of the architecture's baseline);
//! elsewhere this is `copy_from_slice`.

/// Buffers smaller than this are copied plainly: they may be read back from
/// the cache soon (the seal's check, the next buffer's padding), and the
/// fence at the end of a streaming copy is not free.
pub const STREAM_MIN_BYTES: usize = 256 << 10;

/// Whether streaming copies are on (`ARROWPOOL_STREAMING_STORES`, default on).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("ARROWPOOL_STREAMING_STORES")
            .map(|v| !matches!(v.trim(), "0" | "off" | "false" | "no"))
            .unwrap_or(true)
    })
}

/// `dst.copy_from_slice(src)`, with streaming stores when `src` is at least
/// `STREAM_MIN_BYTES` (and they are on). Panics, as `copy_from_slice` does,
/// if the lengths differ.
pub fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "stream_copy::copy: lengths differ");
    if src.len() < STREAM_MIN_BYTES || !enabled() {
        dst.copy_from_slice(src);
        return;
    }
    streaming(dst, src);
}

#[cfg(target_arch = "x86_64")]
fn streaming(dst: &mut [u8], src: &[u8]) {
    use std::arch::x86_64::{_mm_prefetch, _mm_sfence, _MM_HINT_T0};
    let len = src.len();
    // Up to the first cache line boundary of `dst`, plainly.
    let head = dst.as_ptr().align_offset(LINE).min(len);
    dst[..head].copy_from_slice(&src[..head]);
    let d = dst[head..].as_mut_ptr();
    let s = src[head..].as_ptr();
    let body = len - head;
    // Blocks of four pages, a line of each in turn (as glibc's large copy
    // does): four streams at once keep more of memory busy than one.
    // Measured on the 2-core VM, 1 GiB in 8 MiB buffers, one thread: 91-98
    // ms against 114-118 ms line by line and 160-220 ms plainly.
    let blocks = body / BLOCK;
    for b in 0..blocks {
        for line in (0..PAGE).step_by(LINE) {
            for p in 0..4 {
                let at = b * BLOCK + p * PAGE + line;
                // SAFETY: `at + LINE <= blocks * BLOCK <= body`, inside both
                // slices past `head`; the prefetch is a hint (any address).
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(at + BLOCK).cast());
                    stream_line(d.add(at), s.add(at));
                }
            }
        }
    }
    let lines = (body - blocks * BLOCK) / LINE;
    for i in 0..lines {
        let at = blocks * BLOCK + i * LINE;
        // SAFETY: as above, `at + LINE <= body`.
        unsafe { stream_line(d.add(at), s.add(at)) };
    }
    let done = head + blocks * BLOCK + lines * LINE;
    dst[done..].copy_from_slice(&src[done..]);
    // Streaming stores are weakly ordered: make them visible before any store
    // that follows (the seal that publishes the bytes goes out after this).
    // SAFETY: a fence; no memory is touched.
    unsafe { _mm_sfence() };
}

// Only the x86-64 copy (and the tests) use these.
#[cfg(any(target_arch = "x86_64", test))]
const LINE: usize = 64;
#[cfg(any(target_arch = "x86_64", test))]
const PAGE: usize = 4096;
#[cfg(any(target_arch = "x86_64", test))]
const BLOCK: usize = 4 * PAGE;

/// One 64-byte line from `s` (any alignment) to `d` (64-byte aligned), with
/// streaming stores.
///
/// # Safety
/// `[s, s + 64)` readable, `[d, d + 64)` writable, `d` 64-byte aligned.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn stream_line(d: *mut u8, s: *const u8) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    // SAFETY: the caller's; SSE2 is part of x86-64, and each 16-byte store is
    // aligned as `_mm_stream_si128` requires.
    unsafe {
        let a = _mm_loadu_si128(s.cast::<__m128i>());
        let b = _mm_loadu_si128(s.add(16).cast::<__m128i>());
        let c = _mm_loadu_si128(s.add(32).cast::<__m128i>());
        let e = _mm_loadu_si128(s.add(48).cast::<__m128i>());
        _mm_stream_si128(d.cast::<__m128i>(), a);
        _mm_stream_si128(d.add(16).cast::<__m128i>(), b);
        _mm_stream_si128(d.add(32).cast::<__m128i>(), c);
        _mm_stream_si128(d.add(48).cast::<__m128i>(), e);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn streaming(dst: &mut [u8], src: &[u8]) {
    dst.copy_from_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_exactly_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..(STREAM_MIN_BYTES + 300))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for src_at in [0, 1, 7, 64] {
            for dst_at in [0, 3, 16, 63] {
                for len in [
                    0,
                    63,
                    BLOCK - 1,
                    BLOCK + LINE + 5,
                    STREAM_MIN_BYTES,
                    STREAM_MIN_BYTES + 1,
                    STREAM_MIN_BYTES + 63,
                    STREAM_MIN_BYTES + 200,
                ] {
                    let mut dst = vec![0u8; len + 128];
                    let s = &src[src_at..src_at + len];
                    streaming(&mut dst[dst_at..dst_at + len], s);
                    assert_eq!(&dst[dst_at..dst_at + len], s, "{src_at} {dst_at} {len}");
                    assert!(dst[..dst_at].iter().all(|&b| b == 0));
                    assert!(dst[dst_at + len..].iter().all(|&b| b == 0));
                }
            }
        }
    }

    #[test]
    fn small_copies_and_empty_ones() {
        let mut dst = [0u8; 5];
        copy(&mut dst, b"hello");
        assert_eq!(&dst, b"hello");
        copy(&mut [], &[]);
    }
}
