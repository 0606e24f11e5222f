//! Stored files clustered by force area: the worker holds back validated batches (up to
//! a bound in bytes) and writes each force area's rows into files of that force area
//! alone, so every file's statistics name one force and a query scoped to a force opens
//! only that force's files.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::Int32Type;

use crate::StoreError;
use crate::datafile::{DataFile, Sink};

/// Validated batches held back before they are written by force area, at most this
/// many bytes; each flush writes one row group per force area held. While the encoders
/// write one such set, the next is gathered: at most two are held at once (the worker's
/// memory limit is far above that).
pub(crate) const HELD_BYTES: usize = 128 << 20;

/// Pieces an encoder's channel holds when rows are clustered (each set of held batches
/// is one piece per force area, so a set is handed over without waiting); unclustered,
/// a channel holds one batch.
pub(crate) const PIECES_QUEUED: usize = 64;

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
pub(crate) fn gather(
    batches: &[Vec<ArrayRef>],
    rows: &[(usize, usize)],
) -> Result<Vec<ArrayRef>, StoreError> {
    let width = batches.first().map_or(0, Vec::len);
    (0..width)
        .map(|c| {
            let sources: Vec<&dyn Array> = batches.iter().map(|b| b[c].as_ref()).collect();
            arrow::compute::interleave(&sources, rows)
                .map_err(|e| StoreError::Internal(format!("gathering rows by force area: {e}")))
        })
        .collect()
}

/// Routes validated batches to the encoders: by force area when the dataset has a force
/// column, otherwise in turn as they come.
pub(crate) struct Router {
    encoders: Vec<SyncSender<Piece>>,
    force: Option<usize>,
    batches: usize,
    held: Vec<Vec<ArrayRef>>,
    held_bytes: usize,
    /// Force areas held, each with its rows as (held batch, row).
    groups: Vec<Group>,
    index: HashMap<Option<String>, usize>,
    /// Each force area's encoder and file there, fixed when it is first seen.
    places: HashMap<Option<String>, (usize, usize)>,
    files_per_encoder: Vec<usize>,
    /// Told when the held batches last sent are let go by every encoder.
    released: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::SyncSender<()>,
    in_flight: bool,
}

struct Group {
    force: Option<String>,
    rows: Vec<(usize, usize)>,
}

/// An encoder stopped: its own error says why.
pub(crate) struct Stopped;

impl Router {
    /// Routes to these encoders; `force` is the force column's position, if any.
    pub(crate) fn new(encoders: Vec<SyncSender<Piece>>, force: Option<usize>) -> Router {
        let n = encoders.len();
        let (release, released) = std::sync::mpsc::sync_channel(1);
        Router {
            released,
            release,
            in_flight: false,
            encoders,
            force,
            batches: 0,
            held: Vec::new(),
            held_bytes: 0,
            groups: Vec::new(),
            index: HashMap::new(),
            places: HashMap::new(),
            files_per_encoder: vec![0; n],
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
        self.held_bytes += columns
            .iter()
            .map(|c| c.get_array_memory_size())
            .sum::<usize>();
        self.held.push(columns);
        if self.held_bytes >= HELD_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands every force area's held rows to its encoder, as one row group of its file,
    /// once the encoders have let go of the batches handed over before.
    pub(crate) fn flush(&mut self) -> Result<(), Stopped> {
        if self.held.is_empty() {
            return Ok(());
        }
        if self.in_flight {
            // Every encoder dropping its share of the last set sends this once; an
            // encoder that stopped drops its share too.
            self.released.recv().map_err(|_| Stopped)?;
        }
        let mut groups = std::mem::take(&mut self.groups);
        self.index.clear();
        groups.sort_by(|a, b| a.force.cmp(&b.force));
        let held = Arc::new(Held {
            batches: std::mem::take(&mut self.held),
            released: self.release.clone(),
        });
        self.held_bytes = 0;
        self.in_flight = true;
        for group in groups.into_iter().filter(|g| !g.rows.is_empty()) {
            let next = self.places.len();
            let (e, file) = *self.places.entry(group.force).or_insert_with(|| {
                let e = next % self.encoders.len();
                let file = self.files_per_encoder[e];
                self.files_per_encoder[e] += 1;
                (e, file)
            });
            self.send(
                e,
                Piece::Rows {
                    file,
                    held: held.clone(),
                    rows: group.rows,
                },
            )?;
        }
        Ok(())
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
