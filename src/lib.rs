//! arrowpool: a shared-memory store for Apache Arrow tables.
//!
//! One server process (`arrowpoold`) keeps named Arrow tables in a
//! hugepage-backed shared-memory arena; any number of client processes put
//! tables in and get them back zero-copy: a get hands the client the location
//! of the table inside a mapping it already has, and the client builds Arrow
//! arrays that point straight into it.
//!
//! # Layout
//! - [`arena`]: the shared-memory arena: memfd, hugepages and fallbacks, mapping,
//!   pages allocated ahead.
//! - [`alloc`]: the offset allocator over the arena (best fit, aligned, merging).
//! - [`store`]: the object table: names, versions, leases, LRU eviction, capacity.
//! - [`protocol`]: the wire format: frame header, handshake, one file per request
//!   kind (encode + decode shared by server and client).
//! - [`server`]: the thread-per-core compio (io_uring) server: listener, connections,
//!   request handling, shared state.
//! - [`ipc`]: Arrow IPC files in the arena: size bounds, writing, zero-copy
//!   opening; `ipc/check.rs` the seal-time check of a file (structure, then
//!   every column on every core), `ipc/layout.rs` what is checked per array.
//! - [`ingest`]: Parquet -> arena, done by the server: io_uring reads of the
//!   projected column chunks, a push decoder per row group on every core, the
//!   IPC file written into the arena while decoding (see docs/INGEST.md).
//! - [`client`]: the Rust client: zero-copy `RecordBatch`es that hold a lease.
//! - [`sys`]: raw descriptor passing (SCM_RIGHTS). With `arena`, `client`, `ipc/{mod,check}.rs`,
//!   `server/shared.rs` and `ingest/{engine,buffer,read}.rs` (io_uring
//!   submissions, aligned read buffers), the only places with `unsafe`; every
//!   other module denies it.
//! - [`util`]: byte-size parsing and formatting.
//!
//! Binaries: `arrowpoold` (server) and `arrowpool` (CLI) in `src/bin/`.

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
pub mod ingest;
#[allow(unsafe_code)] // borrowed buffers for the seal check; skipping validation on open
pub mod ipc;
#[allow(unsafe_code)] // the server-side put writes the range it just reserved
pub mod pool;
pub mod protocol;
pub mod server;
pub mod store;
#[allow(unsafe_code)] // SCM_RIGHTS descriptor passing
pub mod sys;
pub mod util;

pub use client::{Client, ClientError, PutInfo, Table};
