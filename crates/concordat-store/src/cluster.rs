//! Stored files clustered by force area: the worker holds back validated batches (up to
//! a bound in bytes) and writes each force area's rows into files of that force area
//! alone, so every file's statistics name one force and a query scoped to a force opens
//! only that force's files.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, Int32Array};
use arrow::datatypes::Int32Type;

use crate::StoreError;
use crate::coded::CodedChunk;
use crate::datafile::{DataFile, ROW_GROUP_ROWS, Sink};

/// Validated batches held back before they are written by force area, at most this
/// many bytes; each flush writes row groups of each force area held. While the encoders
/// write such sets, the next is gathered: at most `SETS_IN_FLIGHT + 1` are held at once
/// (the worker's memory limit is far above that).
pub(crate) const HELD_BYTES: usize = 128 << 20;

/// Sets handed to the encoders and not yet let go: with two, the decoder gathers the
/// next set while the encoders finish one and start another, so neither side waits for
/// the other at every set.
const SETS_IN_FLIGHT: usize = 2;

/// Pieces an encoder's channel holds when rows are clustered (each set of held batches
/// is a piece per force area and row group, so sets are handed over without waiting);
/// unclustered, a channel holds one batch.
pub(crate) const PIECES_QUEUED: usize = 128;

/// Batches held back, shared by the encoders writing them; says when they are let go.
pub(crate) struct Held {
    batches: Vec<Vec<ArrayRef>>,
    released: std::sync::mpsc::SyncSender<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.released.try_send(());
    }
}

/// A piece of work for an encoder.
pub(crate) enum Piece {
    /// A batch for its first file.
    Batch(Vec<ArrayRef>),
    /// One row group for one of its files: these rows of the held batches, as (batch,
    /// row), gathered by the encoder.
    Rows {
        file: usize,
        held: Arc<Held>,
        rows: Vec<(usize, usize)>,
    },
}

/// Encodes pieces into its own files, one [`Sink`] per force area it was given.
pub(crate) fn encode(
    pieces: std::sync::mpsc::Receiver<Piece>,
    dir: &Path,
    stored: arrow::datatypes::SchemaRef,
    plain: Vec<String>,
    encoder: usize,
) -> Result<Vec<DataFile>, StoreError> {
    let mut sinks: Vec<Sink> = Vec::new();
    for piece in pieces {
        let (file, columns, ends_group) = match piece {
            Piece::Batch(columns) => (0, columns, false),
            Piece::Rows { file, held, rows } => (file, gather(&held.batches, &rows)?, true),
        };
        while sinks.len() <= file {
            let prefix = format!("part-{encoder}-{:03}", sinks.len());
            sinks.push(Sink::new(dir, stored.clone(), plain.clone(), &prefix));
        }
        let sink = &mut sinks[file];
        sink.write(columns)?;
        if ends_group {
            sink.end_row_group()?;
        }
    }
    let mut files = Vec::new();
    for sink in sinks {
        files.extend(sink.finish()?);
    }
    Ok(files)
}

/// The given rows, as (batch, row), of batches, column by column: one copy.
/// A coded column (a dictionary of text) is gathered as keys into the batches'
/// dictionaries side by side: no dictionary is merged, no value hashed or compared (the
/// chunk writer looks each entry up once).
pub(crate) fn gather(
    batches: &[Vec<ArrayRef>],
    rows: &[(usize, usize)],
) -> Result<Vec<ArrayRef>, StoreError> {
    let width = batches.first().map_or(0, Vec::len);
    let failed = |e: arrow::error::ArrowError| {
        StoreError::Internal(format!("gathering rows by force area: {e}"))
    };
    (0..width)
        .map(|c| {
            let sources: Vec<&dyn Array> = batches.iter().map(|b| b[c].as_ref()).collect();
            if sources.iter().all(|s| CodedChunk::takes(*s)) {
                gather_coded(&sources, rows).map_err(failed)
            } else {
                arrow::compute::interleave(&sources, rows).map_err(failed)
            }
        })
        .collect()
}

/// [`gather`] of dictionary arrays of text with `Int32` keys.
fn gather_coded(
    sources: &[&dyn Array],
    rows: &[(usize, usize)],
) -> Result<ArrayRef, arrow::error::ArrowError> {
    let dictionaries: Vec<&DictionaryArray<Int32Type>> = sources
        .iter()
        .map(|s| s.as_dictionary::<Int32Type>())
        .collect();
    let mut first = Vec::with_capacity(dictionaries.len());
    let mut entries = 0usize;
    for d in &dictionaries {
        first.push(i32::try_from(entries).map_err(|_| {
            arrow::error::ArrowError::InvalidArgumentError("too many dictionary entries".into())
        })?);
        entries += d.values().len();
    }
    let values: Vec<&dyn Array> = dictionaries.iter().map(|d| d.values().as_ref()).collect();
    let values = arrow::compute::concat(&values)?;
    let keys: Int32Array = if dictionaries.iter().all(|d| d.keys().null_count() == 0) {
        let of: Vec<&[i32]> = dictionaries
            .iter()
            .map(|d| d.keys().values().as_ref())
            .collect();
        let keys: Vec<i32> = rows
            .iter()
            .map(|&(b, r)| first[b].wrapping_add(of[b][r]))
            .collect();
        keys.into()
    } else {
        rows.iter()
            .map(|&(b, r)| {
                let keys = dictionaries[b].keys();
                keys.is_valid(r)
                    .then(|| first[b].wrapping_add(keys.values()[r]))
            })
            .collect()
    };
    // Checks every key against the side-by-side dictionaries.
    Ok(Arc::new(DictionaryArray::try_new(keys, values)?))
}

/// Routes validated batches to the encoders: by force area when the dataset has a force
/// column, otherwise in turn as they come.
pub(crate) struct Router {
    encoders: Vec<SyncSender<Piece>>,
    force: Option<usize>,
    batches: usize,
    held: Vec<Vec<ArrayRef>>,
    held_bytes: usize,
    held_rows: usize,
    /// Rows the file declares that have not come yet.
    rows_left: u64,
    /// Force areas held, each with its rows as (held batch, row).
    groups: Vec<Group>,
    index: HashMap<Option<String>, usize>,
    /// The file of a force area at an encoder, once it has one.
    places: HashMap<(Option<String>, usize), usize>,
    files_per_encoder: Vec<usize>,
    /// Rows handed to each encoder so far.
    sent: Vec<usize>,
    /// Sets of held batches handed over so far.
    flushes: usize,
    /// Told each time a set of held batches is let go by every encoder.
    released: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::SyncSender<()>,
    in_flight: usize,
}

struct Group {
    force: Option<String>,
    rows: Vec<(usize, usize)>,
}

/// An encoder stopped: its own error says why.
pub(crate) struct Stopped;

impl Router {
    /// Routes to these encoders; `force` is the force column's position, if any;
    /// `rows` is how many rows the file declares.
    pub(crate) fn new(encoders: Vec<SyncSender<Piece>>, force: Option<usize>, rows: u64) -> Router {
        let n = encoders.len();
        // Room for every set in flight: a release is never lost.
        let (release, released) = std::sync::mpsc::sync_channel(SETS_IN_FLIGHT);
        Router {
            released,
            release,
            in_flight: 0,
            encoders,
            force,
            batches: 0,
            held: Vec::new(),
            held_bytes: 0,
            held_rows: 0,
            rows_left: rows,
            groups: Vec::new(),
            index: HashMap::new(),
            places: HashMap::new(),
            files_per_encoder: vec![0; n],
            sent: vec![0; n],
            flushes: 0,
        }
    }

    /// Takes one validated batch (columns in the schema's order).
    pub(crate) fn push(&mut self, columns: Vec<ArrayRef>) -> Result<(), Stopped> {
        let Some(force) = self.force else {
            let e = self.batches % self.encoders.len();
            self.batches += 1;
            return self.send(e, Piece::Batch(columns));
        };
        let b = self.held.len();
        let labels = group_of_rows(&columns[force], &mut self.index, &mut self.groups);
        for (row, g) in labels.into_iter().enumerate() {
            self.groups[g].rows.push((b, row));
        }
        let rows = columns.first().map_or(0, |c| c.len());
        self.held_bytes += columns
            .iter()
            .map(|c| c.get_array_memory_size())
            .sum::<usize>();
        self.held_rows += rows;
        self.rows_left = self.rows_left.saturating_sub(rows as u64);
        self.held.push(columns);
        if self.held_bytes >= self.bound() {
            self.flush()?;
        }
        Ok(())
    }

    /// The bytes held at which they are handed over. The first sets are smaller
    /// (a quarter, then half of [`HELD_BYTES`]), so the encoders start early and do not
    /// wait long for the second. Near the end of the file (by the rows it declares; a
    /// wrong count only moves a boundary), the rest is split in halves down to a quarter:
    /// nothing overlaps the encoding of the last set, so it is kept small.
    fn bound(&self) -> usize {
        let quarter = HELD_BYTES / 4;
        let start = quarter << self.flushes.min(2);
        let per_row = self.held_bytes / self.held_rows.max(1);
        let left = usize::try_from(self.rows_left)
            .unwrap_or(usize::MAX)
            .saturating_mul(per_row);
        if left <= HELD_BYTES {
            start.min(left.max(quarter))
        } else {
            start
        }
    }

    /// Hands every force area's held rows to the encoders, once fewer than
    /// `SETS_IN_FLIGHT` sets handed over before are still held by them.
    pub(crate) fn flush(&mut self) -> Result<(), Stopped> {
        if self.held.is_empty() {
            return Ok(());
        }
        while self.in_flight >= SETS_IN_FLIGHT {
            // Every encoder dropping its share of a set sends this once; an encoder
            // that stopped drops its share too.
            self.released.recv().map_err(|_| Stopped)?;
            self.in_flight -= 1;
        }
        let mut groups = std::mem::take(&mut self.groups);
        self.index.clear();
        groups.sort_by(|a, b| a.force.cmp(&b.force));
        let held = Arc::new(Held {
            batches: std::mem::take(&mut self.held),
            released: self.release.clone(),
        });
        self.held_bytes = 0;
        self.held_rows = 0;
        self.in_flight += 1;
        self.flushes += 1;
        for group in groups {
            // A force area's rows go in row groups of at most ROW_GROUP_ROWS, each to
            // the encoder with the least work, or to one already writing a file of that
            // force area unless that puts it a row group ahead: both cores stay busy
            // even when the upload is sorted by force area (a set of one or two force
            // areas), and a force area gets a second file only when that balances them.
            for rows in group.rows.chunks(ROW_GROUP_ROWS) {
                let e = self.encoder_for(&group.force, rows.len());
                let next = self.files_per_encoder[e];
                let file = *self.places.entry((group.force.clone(), e)).or_insert(next);
                if file == next {
                    self.files_per_encoder[e] += 1;
                }
                self.sent[e] += rows.len();
                self.send(
                    e,
                    Piece::Rows {
                        file,
                        held: held.clone(),
                        rows: rows.to_vec(),
                    },
                )?;
            }
        }
        Ok(())
    }

    /// The encoder for the next row group (of `rows` rows) of a force area: one already
    /// writing a file of it, if that leaves it at most a row group ahead of the least
    /// busy, else the least busy. No encoder is ever more than a row group ahead.
    fn encoder_for(&self, force: &Option<String>, rows: usize) -> usize {
        let least = (0..self.sent.len())
            .min_by_key(|e| self.sent[*e])
            .unwrap_or(0);
        (0..self.sent.len())
            .filter(|e| self.places.contains_key(&(force.clone(), *e)))
            .find(|e| self.sent[*e] + rows <= self.sent[least] + ROW_GROUP_ROWS)
            .unwrap_or(least)
    }

    fn send(&self, encoder: usize, piece: Piece) -> Result<(), Stopped> {
        self.encoders[encoder].send(piece).map_err(|_| Stopped)
    }

    /// Writes what is held and lets the encoders finish.
    pub(crate) fn finish(mut self) -> Result<(), Stopped> {
        self.flush()
    }
}

/// Every row of the batches, as (batch, row), in the order of the force area in column
/// `force` (in the order they come within one force area).
pub(crate) fn rows_by_force(batches: &[Vec<ArrayRef>], force: usize) -> Vec<(usize, usize)> {
    let mut index = HashMap::new();
    let mut groups = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        for (row, g) in group_of_rows(&batch[force], &mut index, &mut groups)
            .into_iter()
            .enumerate()
        {
            groups[g].rows.push((b, row));
        }
    }
    groups.sort_by(|a, b| a.force.cmp(&b.force));
    groups.into_iter().flat_map(|g| g.rows).collect()
}

/// The group of each row of a force column (text, or coded text), adding groups for
/// force areas not seen before. A coded column is looked up once per distinct value.
fn group_of_rows(
    a: &ArrayRef,
    index: &mut HashMap<Option<String>, usize>,
    groups: &mut Vec<Group>,
) -> Vec<usize> {
    let mut group = |force: Option<&str>| -> usize {
        let key = force.map(str::to_owned);
        if let Some(&g) = index.get(&key) {
            return g;
        }
        groups.push(Group {
            force: key.clone(),
            rows: Vec::new(),
        });
        index.insert(key, groups.len() - 1);
        groups.len() - 1
    };
    if let Some(d) = a.as_dictionary_opt::<Int32Type>() {
        let values = d.values().as_string::<i32>();
        let of_key: Vec<usize> = (0..values.len())
            .map(|k| group(values.is_valid(k).then(|| values.value(k))))
            .collect();
        let null = group(None);
        let mut out = Vec::with_capacity(d.len());
        for (i, k) in d.keys().values().iter().enumerate() {
            out.push(if d.is_valid(i) {
                usize::try_from(*k)
                    .ok()
                    .and_then(|k| of_key.get(k).copied())
                    .unwrap_or(null)
            } else {
                null
            });
        }
        return out;
    }
    let Some(text) = a.as_string_opt::<i32>() else {
        let g = group(None);
        return vec![g; a.len()];
    };
    let mut last: Option<(Option<&str>, usize)> = None;
    text.iter()
        .map(|v| match last {
            Some((l, g)) if l == v => g,
            _ => {
                let g = group(v);
                last = Some((v, g));
                g
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::StringArray;

    use super::*;

    #[test]
    fn an_upload_sorted_by_force_area_keeps_both_encoders_busy_and_each_file_to_one_force() {
        let (a, b) = (
            std::sync::mpsc::sync_channel(PIECES_QUEUED),
            std::sync::mpsc::sync_channel(PIECES_QUEUED),
        );
        let receivers = [a.1, b.1];
        // Sorted by force area, as partners often export: one large, one mid, one small.
        let forces: Vec<&str> = std::iter::repeat_n("E23000001", 300_000)
            .chain(std::iter::repeat_n("E23000002", 50_000))
            .chain(std::iter::repeat_n("E23000003", 9_000))
            .collect();
        let mut router = Router::new(vec![a.0, b.0], Some(0), forces.len() as u64);
        let seen = std::thread::scope(|scope| {
            let workers: Vec<_> = receivers
                .into_iter()
                .map(|rx| {
                    scope.spawn(move || {
                        let mut got = Vec::new();
                        for piece in rx {
                            let Piece::Rows { file, held, rows } = piece else {
                                panic!("clustered rows come as row groups")
                            };
                            let forces: BTreeSet<String> = rows
                                .iter()
                                .map(|(b, r)| {
                                    held.batches[*b][0].as_string::<i32>().value(*r).to_owned()
                                })
                                .collect();
                            got.push((file, forces, rows));
                        }
                        got
                    })
                })
                .collect();
            for chunk in forces.chunks(8192) {
                let column: ArrayRef = Arc::new(StringArray::from(chunk.to_vec()));
                assert!(router.push(vec![column]).is_ok());
            }
            assert!(router.finish().is_ok());
            workers
                .into_iter()
                .map(|w| w.join().expect("encoder"))
                .collect::<Vec<_>>()
        });
        let mut per_file: BTreeMap<(usize, usize), BTreeSet<String>> = BTreeMap::new();
        let mut rows_of = [0usize; 2];
        let mut all = BTreeSet::new();
        for (e, pieces) in seen.iter().enumerate() {
            for (file, forces, rows) in pieces {
                assert!(
                    rows.len() <= ROW_GROUP_ROWS,
                    "a row group of {} rows",
                    rows.len()
                );
                per_file
                    .entry((e, *file))
                    .or_default()
                    .extend(forces.iter().cloned());
                rows_of[e] += rows.len();
                for r in rows {
                    assert!(all.insert(*r), "row {r:?} written twice");
                }
            }
        }
        assert_eq!(all.len(), forces.len(), "every row written once");
        assert!(
            per_file.values().all(|f| f.len() == 1),
            "one force area per file: {per_file:?}"
        );
        assert!(
            rows_of[0].abs_diff(rows_of[1]) <= ROW_GROUP_ROWS,
            "encoders got {rows_of:?} rows"
        );
        let small = per_file
            .values()
            .filter(|f| f.contains("E23000003"))
            .count();
        assert_eq!(small, 1, "a small force area stays in one file");
    }

    #[test]
    fn coded_columns_are_gathered_as_the_text_of_the_rows_asked_for() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // Batches with dictionaries of their own (different entries, orders and sizes),
        // some with null rows, one with none at all.
        let mut batches = Vec::new();
        let mut text: Vec<Vec<Option<String>>> = Vec::new();
        for b in 0..6usize {
            let entries: Vec<String> = (0..1 + b * 3)
                .map(|v| format!("v{}", (v * 7 + b) % 11))
                .collect();
            let rows = if b == 4 { 0 } else { 50 + b * 40 };
            let keys: Vec<Option<i32>> = (0..rows)
                .map(|_| {
                    if b % 2 == 1 && rng.random_bool(0.2) {
                        None
                    } else {
                        Some(rng.random_range(0..entries.len()) as i32)
                    }
                })
                .collect();
            text.push(
                keys.iter()
                    .map(|k| k.map(|k| entries[k as usize].clone()))
                    .collect(),
            );
            let array = DictionaryArray::<Int32Type>::try_new(
                Int32Array::from(keys),
                Arc::new(StringArray::from(entries)),
            )
            .expect("dictionary");
            batches.push(vec![Arc::new(array) as ArrayRef]);
        }
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for _ in 0..400 {
            let b = rng.random_range(0..6usize);
            if !text[b].is_empty() {
                rows.push((b, rng.random_range(0..text[b].len())));
            }
        }
        let gathered = gather(&batches, &rows).expect("gather");
        let as_text =
            arrow::compute::cast(&gathered[0], &arrow::datatypes::DataType::Utf8).expect("cast");
        let got: Vec<Option<String>> = as_text
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect();
        let expected: Vec<Option<String>> = rows.iter().map(|&(b, r)| text[b][r].clone()).collect();
        assert_eq!(got, expected);
        assert!(
            expected.iter().any(Option::is_none),
            "the test gathers null rows"
        );
    }

    #[test]
    fn the_first_and_last_sets_handed_to_the_encoders_are_small() {
        // Batches of 64Ki rows and about 1.3 MiB (sharing their buffers, so the test
        // holds little), 500 of them: about five full sets.
        let rows = 1 << 16;
        let force: ArrayRef = Arc::new(StringArray::from(vec!["E23000001"; rows]));
        let value: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![7i64; rows]));
        let per_batch = force.get_array_memory_size() + value.get_array_memory_size();
        let batches = 500;
        let (tx, rx) = std::sync::mpsc::sync_channel(PIECES_QUEUED);
        let mut router = Router::new(vec![tx], Some(0), (batches * rows) as u64);
        let sets = std::thread::scope(|scope| {
            let encoder = scope.spawn(move || {
                // Rows of each set, in the order the sets came: one force area, so a
                // set's first piece starts at its first held row.
                let mut sets: Vec<usize> = Vec::new();
                for piece in rx {
                    let Piece::Rows { rows, .. } = piece else {
                        panic!("clustered rows come as row groups")
                    };
                    match sets.last_mut() {
                        Some(n) if rows.first() != Some(&(0, 0)) => *n += rows.len(),
                        _ => sets.push(rows.len()),
                    }
                }
                sets
            });
            for _ in 0..batches {
                assert!(router.push(vec![force.clone(), value.clone()]).is_ok());
            }
            assert!(router.finish().is_ok());
            encoder.join().expect("encoder")
        });
        let mib = |rows: usize| rows / (1 << 16) * per_batch / (1 << 20);
        let sizes: Vec<usize> = sets.iter().map(|n| mib(*n)).collect();
        assert_eq!(sets.iter().sum::<usize>(), batches * rows);
        let quarter = HELD_BYTES / 4 / (1 << 20);
        let batch = per_batch.div_ceil(1 << 20);
        assert!(sizes[0] <= quarter + batch, "{sizes:?}");
        assert!(sizes[1] <= 2 * quarter + batch, "{sizes:?}");
        assert!(sizes.iter().any(|s| *s + batch >= 4 * quarter), "{sizes:?}");
        let last = sizes[sizes.len() - 1];
        assert!(last <= quarter + batch, "the last set is small: {sizes:?}");
        // Before it, the rest was split in halves, not handed over in one full set.
        assert!(sizes[sizes.len() - 2] < 3 * quarter, "{sizes:?}");
    }
}
