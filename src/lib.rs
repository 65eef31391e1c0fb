//! arrowpool: a shared-memory store for Apache Arrow tables.
//!
//! One server process (`arrowpoold`) keeps named Arrow tables in a
//! hugepage-backed shared-memory arena; any number of client processes put
//! tables in and get them back zero-copy: a get hands the client the location
//! of the table inside a mapping it already has, and the client builds Arrow
//! arrays that point straight into it.
//!
//! # Layout
//! Listed bottom-up: each module uses only those above it (no cycles).
//! ```text
//! util, sys, paths     alloc ─> store ─> protocol (wire; uses store::ObjectKind)
//!                                  └─> durable (state dir, catalog)
//! arena, ipc, engine ────┴───────┴──────┴─> pool (arena + store + the one put) ─> ingest ─> server
//!                                                       client (protocol, arena, ipc, sys)
//! ```
//! - [`util`]: byte-size parsing and formatting, thread placement.
//! - [`paths`]: the default socket: one per user, in a private directory.
//! - [`sys`]: raw descriptor passing (SCM_RIGHTS).
//! - [`alloc`]: the offset allocator over the arena (best fit, aligned, merging).
//! - [`store`]: the object table: chunks (arena allocations, counted by the
//!   versions that reference them), versions, names, leases, LRU eviction,
//!   capacity, the arena's regions. Pure bookkeeping with its own result types;
//!   knows nothing of the wire.
//! - [`durable`]: `--state-dir`: the directory (lock, tmpfs check) and the
//!   catalog of durable versions, a log of checksummed records; the pool
//!   writes the store's changes to it and recovers from it
//!   (`pool/durable.rs`).
//! - [`arena`]: the shared-memory arena: memfd, hugepages and fallbacks, mapping,
//!   pages allocated ahead.
//! - [`ipc`]: Arrow IPC files in the arena: size bounds, writing, zero-copy
//!   opening; `ipc/check.rs` the seal-time check of a file (structure, then
//!   every column on every core), `ipc/layout.rs` what is checked per array,
//!   `ipc/manifest.rs` a table version as an IPC file spanning the arena
//!   (messages low, chunks between, footer high), `ipc/write.rs` a file
//!   written by several threads (ingest, Flight puts, the client's large puts).
//! - [`engine`]: file I/O engines: io_uring with several reads or writes in
//!   flight, or `pread`/`pwrite`; ingest reads Parquet and the pool spill
//!   files with them.
//! - [`protocol`]: the wire format: frame header, handshake, one file per request
//!   kind (encode + decode shared by server and client).
//! - [`pool`]: the arena and the object table together, and the one put path
//!   (reserve, write, seal with the table check) that socket clients and the
//!   server's own writers share.
//! - [`ingest`]: Parquet -> pool, done by the server: io_uring reads of the
//!   projected column chunks (or ranged GETs from object storage, `remote.rs`), a push decoder per row group on every core, the
//!   IPC file written into the arena while decoding (see docs/INGEST.md).
//! - [`server`]: the thread-per-core compio (io_uring) server: listener,
//!   connections, `server/requests/` (one file per request kind, errors turned
//!   into replies), shared state.
//! - [`client`]: the Rust client: the handshake, zero-copy `RecordBatch`es that
//!   hold a lease.
//!
//! `unsafe` lives only in `arena`, `sys`, `client`, `ipc/{mod,check}.rs`,
//! `pool`, `engine` and `ingest/{buffer,read}.rs` (io_uring submissions,
//! aligned buffers), and `flight`; the crate root denies it everywhere else.
//!
//! Binaries (feature `cli`, on by default): `arrowpoold` (server) and
//! `arrowpool` (CLI) in `src/bin/`; with `default-features = false` the library
//! carries none of their crates (clap, anyhow, indicatif, signal-hook).

// `unsafe` is denied everywhere but in the modules fenced here (and, inside
// `ingest` and `ipc`, the files those allow it in), so that a new file cannot
// use it unnoticed. Every block names the contract it keeps (`// SAFETY:`,
// enforced by clippy's `undocumented_unsafe_blocks`).
#![deny(unsafe_code)]

pub mod alloc;
#[allow(unsafe_code)] // mmap, madvise, munmap of the arena's memfd
pub mod arena;
#[allow(unsafe_code)] // zero-copy buffers over the mapping; writing a pending range
pub mod client;
pub mod durable;
#[allow(unsafe_code)] // io_uring submissions: buffers owned until their completion
pub mod engine;
#[cfg(feature = "flight")]
#[allow(unsafe_code)] // do_get: buffers over the server's mapping that own a lease
pub mod flight;
pub mod ingest;
#[allow(unsafe_code)] // borrowed buffers for the seal check; skipping validation on open
pub mod ipc;
pub mod paths;
#[allow(unsafe_code)] // the server-side put writes the range it just reserved
pub mod pool;
pub mod protocol;
pub mod server;
pub mod store;
#[allow(unsafe_code)] // SCM_RIGHTS descriptor passing
pub mod sys;
pub mod util;

pub use client::{Client, ClientError, PutInfo, Table};
