//! What to read and who decodes it.
//!
//! A *unit* is one decoder's work: some top-level columns of one row group of
//! one file. With many row groups a unit is a whole row group (projected);
//! with fewer than `UNITS_PER_WORKER` per decoder thread, row groups are split
//! by columns so that every core has work until the end. An *extent* is a run of adjacent column
//! chunks of one unit, read into one buffer: only the projected chunks are
//! ever read, so unread columns cost no I/O.
//!
//! ```text
//!   file:  | rg0: a b c d | rg1: a b c d | ... | footer |
//!   units (columns a, c, d requested, enough row groups):
//!          rg0 {a,c,d} -> extents [a] [c d]    rg1 {a,c,d} -> extents [a] [c d]
//! ```

use std::ops::Range;

use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetMetaData;
use parquet::schema::types::SchemaDescriptor;

/// Units wanted per decoder thread: enough that the threads finish close
/// together (the last unit is the tail of the ingest) and that the first
/// unit's bytes are read soon, few enough that per-unit costs stay small.
const UNITS_PER_WORKER: usize = 8;

/// Rows per decoded batch: whole row groups, or at most this many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// A row group decodes to one batch, or to a few equal ones when one of
    /// its columns holds more than `BATCH_COLUMN_BYTES` (uncompressed, per
    /// the footer), so that string offsets stay far from 32 bits, or when it
    /// has more than `MAX_BATCH_ROWS` rows.
    RowGroups,
    /// Batches of at most this many rows (the retry when whole row groups
    /// fail, `ingest::ingest`).
    Rows(usize),
}

/// Rows per batch of the retry (the size every ingest used before whole row
/// groups), and the step a row group's batch size is rounded up to when it
/// is cut into several.
pub const SMALL_BATCH_ROWS: usize = 64 * 1024;

/// Most rows in one batch (a multiple of `SMALL_BATCH_ROWS`): 4Mi. The
/// decoder reserves its buffers for a whole batch before it reads a page, so
/// the batch size must not come from the footer alone: a footer claiming a
/// trillion rows would have it ask for terabytes. Row groups of writers'
/// defaults (1Mi rows) stay one batch; larger ones become a few.
pub const MAX_BATCH_ROWS: u64 = 4 * 1024 * 1024;

/// Most batches one row group decodes to: 2^20, 64 Gi rows in batches of
/// 64Ki (row groups are at most a few million rows in practice). A footer
/// claiming more is corrupt, and its batch list alone would not fit memory.
pub const MAX_BATCHES: u64 = 1 << 20;

/// Uncompressed bytes of one column above which a row group is decoded as
/// several batches.
const BATCH_COLUMN_BYTES: u64 = 256 * 1024 * 1024;

/// Rows per batch for a row group of `rows` rows whose largest requested
/// column holds `largest` uncompressed bytes.
fn batch_rows(batching: Batching, rows: u64, largest: u64) -> usize {
    let rows = rows.max(1);
    let per = match batching {
        Batching::Rows(n) => return n.max(1),
        Batching::RowGroups => rows.div_ceil(largest.div_ceil(BATCH_COLUMN_BYTES).max(1)),
    };
    let step = SMALL_BATCH_ROWS as u64;
    per.min(MAX_BATCH_ROWS)
        .div_ceil(step)
        .saturating_mul(step)
        .min(rows) as usize
}

/// One decoder's work.
#[derive(Debug, Clone)]
pub struct Unit {
    pub file: usize,
    pub row_group: usize,
    /// Top-level columns decoded, ascending (a contiguous run of the requested ones).
    pub roots: Vec<usize>,
    /// Per root: read straight into the arena (`direct.rs`) rather than by
    /// the record batch decoder.
    pub direct: Vec<bool>,
    /// The leaves of the roots the record batch decoder reads (the others).
    pub mask: ProjectionMask,
    /// Byte ranges of the column chunks, in file order.
    pub chunks: Vec<Range<u64>>,
    /// The unit's extents, as indices into `Plan::extents`.
    pub extents: Range<usize>,
    pub rows: u64,
    /// Rows per decoded batch: the same for every unit of a row group (the
    /// manifest joins their columns batch by batch).
    pub batch_rows: usize,
}

impl Unit {
    /// The roots the record batch decoder reads, ascending.
    pub fn decoded_roots(&self) -> Vec<usize> {
        self.roots
            .iter()
            .zip(&self.direct)
            .filter(|(_, &d)| !d)
            .map(|(&r, _)| r)
            .collect()
    }

    /// Rows of each batch the unit decodes to: `batch_rows` until the row
    /// group ends (none for an empty row group, as the decoder gives). An
    /// error if the footer claims more rows than `MAX_BATCHES` batches hold:
    /// no real file has such a row group, and the list would not fit memory.
    pub fn batches(&self) -> Result<Vec<usize>, String> {
        let step = self.batch_rows.max(1) as u64;
        let count = self.rows.div_ceil(step);
        if count > MAX_BATCHES {
            return Err(format!(
                "row group {} claims {} rows: {count} batches of {step}, more than the \
                 {MAX_BATCHES} a row group may have",
                self.row_group, self.rows
            ));
        }
        let mut rows = Vec::with_capacity(count as usize);
        let mut left = self.rows;
        while left > 0 {
            rows.push(left.min(step) as usize);
            left -= left.min(step);
        }
        Ok(rows)
    }
}

/// Bytes read into one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub file: usize,
    pub unit: usize,
    pub range: Range<u64>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub units: Vec<Unit>,
    pub extents: Vec<Extent>,
    /// Bytes of column chunks to read.
    pub read_bytes: u64,
    pub rows: u64,
}

/// Plans the reads and decodes of `roots` (top-level column indices,
/// ascending, non-empty unless the schema is empty) over `files` for
/// `workers` decoder threads, batched as `batching` says; `direct(root)`
/// says which columns are read straight into the arena.
pub fn plan(
    files: &[&ParquetMetaData],
    roots: &[usize],
    direct: impl Fn(usize) -> bool,
    workers: usize,
    batching: Batching,
) -> Plan {
    let row_groups: usize = files.iter().map(|m| m.num_row_groups()).sum();
    let splits = if row_groups == 0 || row_groups >= UNITS_PER_WORKER * workers {
        1
    } else {
        (UNITS_PER_WORKER * workers)
            .div_ceil(row_groups)
            .min(roots.len())
            .max(1)
    };
    let mut plan = Plan::default();
    for (file, metadata) in files.iter().enumerate() {
        let schema = metadata.file_metadata().schema_descr();
        let leaves = leaves_by_root(schema);
        for (row_group, rg) in metadata.row_groups().iter().enumerate() {
            let leaves_of = |root: usize| leaves.get(root).map_or(&[][..], |l| &l[..]);
            let weight = |root: usize| -> u64 {
                leaves_of(root)
                    .iter()
                    .map(|&l| rg.column(l).uncompressed_size().max(0) as u64)
                    .sum::<u64>()
                    .max(1)
            };
            let largest = roots.iter().map(|&r| weight(r)).max().unwrap_or(0);
            let batch_rows = batch_rows(batching, rg.num_rows().max(0) as u64, largest);
            for group in split(roots, splits, weight) {
                let mut chunks: Vec<Range<u64>> = group
                    .iter()
                    .flat_map(|&root| leaves_of(root).iter())
                    .map(|&leaf| {
                        let (start, len) = rg.column(leaf).byte_range();
                        start..start + len
                    })
                    .filter(|r| !r.is_empty())
                    .collect();
                chunks.sort_by_key(|r| r.start);
                let unit = plan.units.len();
                let first_extent = plan.extents.len();
                for c in &chunks {
                    plan.read_bytes += c.end - c.start;
                    match plan.extents.last_mut() {
                        Some(e) if e.unit == unit && c.start <= e.range.end => {
                            e.range.end = e.range.end.max(c.end)
                        }
                        _ => plan.extents.push(Extent {
                            file,
                            unit,
                            range: c.clone(),
                        }),
                    }
                }
                let rows = rg.num_rows().max(0) as u64;
                let direct: Vec<bool> = group.iter().map(|&r| direct(r)).collect();
                let decoded = group.iter().zip(&direct).filter(|(_, &d)| !d);
                plan.units.push(Unit {
                    file,
                    row_group,
                    mask: ProjectionMask::roots(schema, decoded.map(|(&r, _)| r)),
                    roots: group,
                    direct,
                    chunks,
                    extents: first_extent..plan.extents.len(),
                    rows,
                    batch_rows,
                });
            }
            plan.rows += rg.num_rows().max(0) as u64;
        }
    }
    plan
}

/// The leaf columns of each top-level column, in file order.
pub fn leaves_by_root(schema: &SchemaDescriptor) -> Vec<Vec<usize>> {
    let mut leaves: Vec<Vec<usize>> = vec![Vec::new(); schema.root_schema().get_fields().len()];
    for leaf in 0..schema.num_columns() {
        if let Some(l) = leaves.get_mut(schema.get_column_root_idx(leaf)) {
            l.push(leaf);
        }
    }
    leaves
}

/// Splits `roots` into at most `parts` contiguous runs of similar weight.
fn split(roots: &[usize], parts: usize, weight: impl Fn(usize) -> u64) -> Vec<Vec<usize>> {
    if parts <= 1 || roots.len() <= 1 {
        return vec![roots.to_vec()];
    }
    let total: u64 = roots.iter().map(|&r| weight(r)).sum();
    let mut groups = Vec::with_capacity(parts);
    let mut current = Vec::new();
    let mut acc = 0u64;
    for (i, &r) in roots.iter().enumerate() {
        current.push(r);
        acc += weight(r);
        let groups_left = parts - groups.len() - 1;
        let roots_left = roots.len() - i - 1;
        let reached = acc as u128 * parts as u128 >= total as u128 * (groups.len() as u128 + 1);
        if groups_left > 0 && roots_left > 0 && (reached || roots_left == groups_left) {
            groups.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_row_groups_unless_a_column_is_large() {
        let mib = 1024 * 1024;
        let rg = Batching::RowGroups;
        assert_eq!(batch_rows(rg, 1_000_000, 100 * mib), 1_000_000);
        assert_eq!(batch_rows(rg, 0, 0), 1);
        assert_eq!(batch_rows(rg, 10, 0), 10);
        // 600 MiB in one column: three batches, on 64Ki-row steps.
        let n = batch_rows(rg, 3_000_000, 600 * mib);
        assert_eq!(n % SMALL_BATCH_ROWS, 0);
        assert!(
            (1_000_000..1_000_000 + SMALL_BATCH_ROWS).contains(&n),
            "{n}"
        );
        assert_eq!(batch_rows(rg, 100, 10_000 * mib), 100);
        // A huge row group (or a footer that says so): batches of at most 4Mi rows.
        assert_eq!(batch_rows(rg, 1 << 40, 1), MAX_BATCH_ROWS as usize);
        assert_eq!(batch_rows(rg, 5_000_000, 1), MAX_BATCH_ROWS as usize);
        assert_eq!(
            batch_rows(Batching::Rows(SMALL_BATCH_ROWS), 1_000_000, 1),
            SMALL_BATCH_ROWS
        );
    }

    #[test]
    fn split_balances_contiguous_runs() {
        let w = |r: usize| [10u64, 10, 10, 10, 40][r];
        assert_eq!(
            split(&[0, 1, 2, 3, 4], 2, w),
            vec![vec![0, 1, 2, 3], vec![4]]
        );
        assert_eq!(split(&[0, 1, 2, 3, 4], 1, w), vec![vec![0, 1, 2, 3, 4]]);
        assert_eq!(split(&[3], 4, w), vec![vec![3]]);
        let groups = split(&[0, 1, 2], 3, |_| 1);
        assert_eq!(groups, vec![vec![0], vec![1], vec![2]]);
        let all: Vec<usize> = split(&[0, 1, 2, 3, 4], 3, w).concat();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }
}
