//! Persons and their contributions behind each cell.
//!
//! The release aggregate is first computed per (group, person): one row per person in
//! each group, holding that person's contribution to each cell (their rows for a count,
//! their total for a sum). This module reads those rows and keeps, per group and per
//! cell, what the release rules need and nothing more: how many persons contribute, the
//! cell key (their record keys combined), the total, and the largest and smallest
//! contributions (to flatten the extremes). Memory grows with groups, never with persons.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, SchemaRef, UInt64Type};
use arrow::row::{OwnedRow, RowConverter, SortField};

use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::cellkey::combine;

/// Contributions beyond this magnitude are held at it: no person's value in these
/// datasets comes near it, and it keeps every total exact in floating point.
const MAX_CONTRIBUTION: f64 = 1e15;

/// The persons behind one cell and what they contribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Persons with a contribution (non-null and non-zero).
    pub persons: u64,
    /// Their record keys combined.
    pub key: u64,
    total: f64,
    /// The `k` largest contributions, largest first.
    top: Vec<f64>,
    /// The `k` smallest contributions, smallest first.
    bottom: Vec<f64>,
    /// Every contribution while there are fewer than `2k`.
    few: Vec<f64>,
    k: usize,
}

impl Stats {
    /// No one yet; extremes are flattened to the level of the `k`-th person.
    pub fn new(k: usize) -> Stats {
        Stats {
            persons: 0,
            key: 0,
            total: 0.0,
            top: Vec::new(),
            bottom: Vec::new(),
            few: Vec::new(),
            k: k.max(1),
        }
    }

    /// Adds a person (record key) who belongs to the cell without a magnitude (a group).
    pub fn add_person(&mut self, record: u64) {
        self.persons += 1;
        self.key = combine(self.key, record);
    }

    /// Adds one person's contribution; zero and non-numbers contribute nothing.
    pub fn add(&mut self, record: u64, value: f64) {
        if value.is_nan() || value == 0.0 {
            return;
        }
        let v = value.clamp(-MAX_CONTRIBUTION, MAX_CONTRIBUTION);
        self.add_person(record);
        self.total += v;
        let k = self.k;
        // Most persons change neither extreme (a count of 1 among counts of 1): once `k`
        // are held, a value no larger than the `k`-th largest is not searched for.
        if self.top.len() < k || v > self.top[k - 1] {
            let at = self.top.partition_point(|x| *x >= v);
            self.top.insert(at, v);
            self.top.truncate(k);
        }
        if self.bottom.len() < k || v < self.bottom[k - 1] {
            let at = self.bottom.partition_point(|x| *x <= v);
            self.bottom.insert(at, v);
            self.bottom.truncate(k);
        }
        if self.few.len() < 2 * k {
            self.few.push(v);
        }
    }

    /// The total with every contribution held between the `k`-th smallest and the `k`-th
    /// largest (so that no fewer than `k` persons can move it far), and the largest
    /// magnitude a contribution then has. With fewer than `2k - 1` persons every
    /// contribution is replaced by their median.
    pub fn flattened(&self) -> (f64, f64) {
        let k = self.k;
        let n = self.persons as usize;
        if n == 0 {
            return (0.0, 0.0);
        }
        if n < 2 * k - 1 {
            let mut v = self.few.clone();
            v.sort_by(f64::total_cmp);
            let m = if v.len() % 2 == 1 {
                v[v.len() / 2]
            } else {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            };
            return (m * n as f64, m.abs());
        }
        let upper = self.top[k - 1];
        let lower = self.bottom[k - 1];
        let excess: f64 = self.top[..k - 1].iter().map(|v| v - upper).sum();
        let deficit: f64 = self.bottom[..k - 1].iter().map(|v| lower - v).sum();
        (self.total - excess + deficit, upper.abs().max(lower.abs()))
    }
}

/// How a contribution column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Rows of the person (integers).
    Count,
    /// The person's total (floating point).
    Sum,
}

/// One group of the release: the persons in it, and each part's contributions.
#[derive(Debug, Clone)]
pub struct Group {
    /// Everyone in the group.
    pub persons: Stats,
    /// Per part, in the order the parts were given.
    pub parts: Vec<Stats>,
}

impl Group {
    /// No one yet, in each of `parts` parts.
    fn empty(k: usize, parts: usize) -> Group {
        Group {
            persons: Stats::new(k),
            parts: vec![Stats::new(k); parts],
        }
    }
}

/// Why the contributions could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    /// More groups than allowed.
    #[error("more than {0} groups")]
    TooManyGroups(usize),
    /// An Arrow operation failed.
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The rows do not have the expected shape.
    #[error("{0}")]
    Shape(String),
    /// Grouping or the memory budget failed.
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
}

/// The record keys at `at` of a batch.
fn record_keys(batch: &RecordBatch, at: usize) -> Result<&arrow::array::UInt64Array, GatherError> {
    batch
        .column(at)
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| GatherError::Shape("the person column is not a record key".into()))
}

/// What reads batches into per-group statistics: a [`Gatherer`] or a [`PersonTable`].
pub trait Gather {
    /// Reads one batch.
    fn push(&mut self, batch: &RecordBatch) -> Result<(), GatherError>;
    /// The group columns (one row per group) and each group's statistics.
    fn finish(self) -> Result<(Vec<ArrayRef>, Vec<Group>), GatherError>;
}

impl Gather for Gatherer {
    fn push(&mut self, batch: &RecordBatch) -> Result<(), GatherError> {
        Gatherer::push(self, batch)
    }
    fn finish(self) -> Result<(Vec<ArrayRef>, Vec<Group>), GatherError> {
        Gatherer::finish(self)
    }
}

impl Gather for PersonTable {
    fn push(&mut self, batch: &RecordBatch) -> Result<(), GatherError> {
        PersonTable::push(self, batch)
    }
    fn finish(self) -> Result<(Vec<ArrayRef>, Vec<Group>), GatherError> {
        PersonTable::finish(self)
    }
}

/// Gathers per-(group, person) rows into per-group statistics.
///
/// This reads the output of a per-(group, person) aggregate; grouping sets are computed
/// that way. For plain groups, [`PersonTable`] does the aggregate and the gathering in
/// one pass.
pub struct Gatherer {
    k: usize,
    groups_at: Vec<usize>,
    person_at: usize,
    parts: Vec<(usize, Part)>,
    converter: Option<RowConverter>,
    /// Each group's slot by its row. It never holds more than `max_groups` rows, so
    /// colliding group values cost little and a fast hash does.
    index: HashMap<Box<[u8]>, usize, foldhash::fast::RandomState>,
    keys: Vec<OwnedRow>,
    groups: Vec<Group>,
    max_groups: usize,
}

impl Gatherer {
    /// Rows of `schema`: group columns at `groups_at`, the pseudonym at `person_at`,
    /// and the contributions to each part.
    pub fn new(
        schema: &SchemaRef,
        groups_at: Vec<usize>,
        person_at: usize,
        parts: Vec<(usize, Part)>,
        k: usize,
        max_groups: usize,
    ) -> Result<Gatherer, GatherError> {
        let converter = if groups_at.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                groups_at
                    .iter()
                    .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                    .collect(),
            )?)
        };
        Ok(Gatherer {
            k,
            groups_at,
            person_at,
            parts,
            converter,
            index: HashMap::with_hasher(foldhash::fast::RandomState::default()),
            keys: Vec::new(),
            groups: Vec::new(),
            max_groups,
        })
    }

    fn new_group(&self) -> Group {
        Group::empty(self.k, self.parts.len())
    }

    /// Reads one batch of per-(group, person) rows, each person by their record key.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), GatherError> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let person = record_keys(batch, self.person_at)?;
        let values: Vec<ArrayRef> = self
            .parts
            .iter()
            .map(|(i, _)| arrow::compute::cast(batch.column(*i), &DataType::Float64))
            .collect::<Result<_, _>>()?;
        let values: Vec<_> = values
            .iter()
            .map(|a| a.as_primitive::<Float64Type>().clone())
            .collect();
        let slots: Vec<usize> = match &self.converter {
            None => {
                if self.groups.is_empty() {
                    let g = self.new_group();
                    self.groups.push(g);
                }
                vec![0; rows]
            }
            Some(converter) => {
                let columns: Vec<ArrayRef> = self
                    .groups_at
                    .iter()
                    .map(|&i| batch.column(i).clone())
                    .collect();
                let converted = converter.convert_columns(&columns)?;
                let mut slots = Vec::with_capacity(rows);
                for r in 0..rows {
                    let row = converted.row(r);
                    let slot = match self.index.get(row.as_ref()) {
                        Some(s) => *s,
                        None => {
                            if self.groups.len() >= self.max_groups {
                                return Err(GatherError::TooManyGroups(self.max_groups));
                            }
                            let owned = row.owned();
                            let s = self.groups.len();
                            self.index.insert(row.as_ref().into(), s);
                            self.keys.push(owned);
                            let g = self.new_group();
                            self.groups.push(g);
                            s
                        }
                    };
                    slots.push(slot);
                }
                slots
            }
        };
        for (r, slot) in slots.into_iter().enumerate() {
            if person.is_null(r) {
                continue;
            }
            let record = person.value(r);
            let group = &mut self.groups[slot];
            group.persons.add_person(record);
            for (p, v) in values.iter().enumerate() {
                if v.is_valid(r) {
                    group.parts[p].add(record, v.value(r));
                }
            }
        }
        Ok(())
    }

    /// The group columns (one row per group) and each group's statistics. With no group
    /// columns there is exactly one group, even over no rows.
    pub fn finish(mut self) -> Result<(Vec<ArrayRef>, Vec<Group>), GatherError> {
        match self.converter {
            None => {
                if self.groups.is_empty() {
                    let g = self.new_group();
                    self.groups.push(g);
                }
                Ok((Vec::new(), self.groups))
            }
            Some(converter) => {
                let columns = converter.convert_rows(self.keys.iter().map(OwnedRow::row))?;
                Ok((columns, self.groups))
            }
        }
    }
}

/// Where one part's input is in a row of the release's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartInput {
    /// What the part adds up.
    pub part: Part,
    /// The argument: for a count, rows where it is not null count; for a sum, its value
    /// (as a float) is added.
    pub arg: usize,
    /// A boolean column: only rows where it is true take part.
    pub filter: Option<usize>,
}

/// Persons' rows are spread over this many partitions by the top bits of their record key,
/// so that each partition's rows are merged where they fit in the processor's cache.
const PARTITION_BITS: u32 = 8;

/// A partition is merged again once it holds this many unmerged rows beyond twice its
/// merged ones (so memory follows (group, person) pairs, not rows).
const MERGE_SLACK: usize = 4096;

/// The release aggregate per (group, person) and the gathering of [`Gatherer`] in one
/// pass over the release's input rows: each row's group found by DataFusion's own group
/// interning, then its person's contributions added up per (group, record key). What it
/// gives equals what a DataFusion aggregate grouped by the groups and the person, read by
/// a [`Gatherer`], gives; what it holds is within the query's memory budget.
///
/// Rows are not looked up one by one in a table of every (group, person) pair: that table
/// is larger than the processor's cache, and a lookup per row waited on memory. Each row
/// is appended to one of 256 partitions by its record key (keyed pseudorandom values, so
/// the partitions are even); a partition's rows of the same (group, person) are added up
/// when it has grown, and once more at the end, in a table of that partition only.
pub struct PersonTable {
    k: usize,
    groups_at: Vec<usize>,
    person_at: usize,
    parts: Vec<PartInput>,
    /// The groups seen, by their values (none without group columns: one group).
    values: Option<Box<dyn GroupValues>>,
    slots: Vec<usize>,
    /// Per partition, rows of `2 + parts` words: the record key, the group, and each
    /// part's contribution (bits of an `f64`). The first `merged` rows have distinct
    /// (record key, group) pairs, in order.
    partitions: Vec<Partition>,
    /// Unmerged rows a partition may hold beyond twice its merged ones.
    slack: usize,
    max_groups: usize,
    reservation: MemoryReservation,
}

#[derive(Default)]
struct Partition {
    rows: Vec<u64>,
    merged: usize,
}

impl Partition {
    /// Adds up each (record key, group) pair's contributions into one row, kept where the
    /// pair was first met: the rows not yet merged are looked up in a table of the
    /// partition's pairs, small enough to stay in the processor's cache.
    fn merge(&mut self, stride: usize) {
        let n = self.rows.len() / stride;
        if n == self.merged {
            return;
        }
        let mask = (2 * n).next_power_of_two() - 1;
        let mut at: Vec<u32> = vec![u32::MAX; mask + 1];
        let mut pairs = 0usize;
        for r in 0..n {
            let (record, group) = (self.rows[r * stride], self.rows[r * stride + 1]);
            // Record keys are keyed pseudorandom values: their low bits spread the pairs.
            let mut slot = (record ^ group.wrapping_mul(0x9e37_79b9_7f4a_7c15)) as usize & mask;
            loop {
                let held = at[slot];
                if held == u32::MAX {
                    at[slot] = pairs as u32;
                    self.rows
                        .copy_within(r * stride..(r + 1) * stride, pairs * stride);
                    pairs += 1;
                    break;
                }
                let p = held as usize * stride;
                if self.rows[p] == record && self.rows[p + 1] == group {
                    for c in 2..stride {
                        let total = f64::from_bits(self.rows[p + c])
                            + f64::from_bits(self.rows[r * stride + c]);
                        self.rows[p + c] = total.to_bits();
                    }
                    break;
                }
                slot = (slot + 1) & mask;
            }
        }
        self.rows.truncate(pairs * stride);
        self.merged = pairs;
    }
}

impl PersonTable {
    /// Input rows of `schema`: group columns at `groups_at`, the record key at
    /// `person_at`, and each part's input; its memory is taken from `pool`.
    pub fn new(
        schema: &SchemaRef,
        groups_at: Vec<usize>,
        person_at: usize,
        parts: Vec<PartInput>,
        k: usize,
        max_groups: usize,
        pool: &std::sync::Arc<dyn MemoryPool>,
    ) -> Result<PersonTable, GatherError> {
        let values = if groups_at.is_empty() {
            None
        } else {
            let fields: Vec<_> = groups_at.iter().map(|&i| schema.field(i).clone()).collect();
            Some(new_group_values(
                std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
                &GroupOrdering::None,
            )?)
        };
        Ok(PersonTable {
            k,
            groups_at,
            person_at,
            parts,
            values,
            slots: Vec::new(),
            partitions: (0..1usize << PARTITION_BITS)
                .map(|_| Partition::default())
                .collect(),
            slack: MERGE_SLACK,
            max_groups,
            reservation: MemoryConsumer::new("concordat disclosure control").register(pool),
        })
    }

    fn stride(&self) -> usize {
        2 + self.parts.len()
    }

    /// Reads one batch of input rows.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), GatherError> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let person = record_keys(batch, self.person_at)?;
        self.slots.clear();
        match &mut self.values {
            None => self.slots.resize(rows, 0),
            Some(values) => {
                let columns: Vec<ArrayRef> = self
                    .groups_at
                    .iter()
                    .map(|&i| batch.column(i).clone())
                    .collect();
                values.intern(&columns, &mut self.slots)?;
                if values.len() > self.max_groups {
                    return Err(GatherError::TooManyGroups(self.max_groups));
                }
            }
        }
        // Per part, each row's contribution: 1 or 0 for a count, the value or 0 for a sum
        // (a contribution of 0 adds nothing to a cell, as no contribution does).
        let mut contributions: Vec<Vec<f64>> = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            let arg = batch.column(p.arg);
            let mut take = arg.logical_nulls();
            if let Some(f) = p.filter {
                let filter = batch
                    .column(f)
                    .as_boolean_opt()
                    .ok_or_else(|| GatherError::Shape("a FILTER is not boolean".into()))?;
                // True and not null.
                let holds = arrow::buffer::NullBuffer::from(match filter.nulls() {
                    Some(nulls) => filter.values() & nulls.inner(),
                    None => filter.values().clone(),
                });
                take = arrow::buffer::NullBuffer::union(take.as_ref(), Some(&holds));
            }
            let taken = |r: usize| take.as_ref().is_none_or(|t| t.is_valid(r));
            contributions.push(match p.part {
                Part::Count => (0..rows).map(|r| f64::from(u8::from(taken(r)))).collect(),
                Part::Sum => {
                    let values = arrow::compute::cast(arg, &DataType::Float64)?;
                    let values = values.as_primitive::<Float64Type>();
                    (0..rows)
                        .map(|r| {
                            if taken(r) && values.is_valid(r) {
                                values.value(r)
                            } else {
                                0.0
                            }
                        })
                        .collect()
                }
            });
        }
        let stride = self.stride();
        for (r, &slot) in self.slots.iter().enumerate() {
            if person.is_null(r) {
                continue;
            }
            let record = person.value(r);
            let partition = &mut self.partitions[(record >> (64 - PARTITION_BITS)) as usize];
            partition.rows.push(record);
            partition.rows.push(slot as u64);
            partition
                .rows
                .extend(contributions.iter().map(|c| c[r].to_bits()));
        }
        for partition in &mut self.partitions {
            if partition.rows.len() / stride >= 2 * partition.merged + self.slack {
                partition.merge(stride);
            }
        }
        let held = self
            .partitions
            .iter()
            .map(|p| p.rows.capacity() * std::mem::size_of::<u64>())
            .sum::<usize>()
            + self.values.as_ref().map_or(0, |v| v.size());
        self.reservation.try_resize(held)?;
        Ok(())
    }

    /// The group columns (one row per group) and each group's statistics, as
    /// [`Gatherer::finish`] gives them.
    pub fn finish(mut self) -> Result<(Vec<ArrayRef>, Vec<Group>), GatherError> {
        let (columns, groups) = match &mut self.values {
            None => (Vec::new(), 1),
            Some(values) => {
                let n = values.len();
                (values.emit(EmitTo::All)?, n)
            }
        };
        let mut out = vec![Group::empty(self.k, self.parts.len()); groups];
        let stride = self.stride();
        for partition in &mut self.partitions {
            partition.merge(stride);
            for row in partition.rows.chunks_exact(stride) {
                let (record, group) = (row[0], &mut out[row[1] as usize]);
                group.persons.add_person(record);
                for (stats, total) in group.parts.iter_mut().zip(&row[2..]) {
                    stats.add(record, f64::from_bits(*total));
                }
            }
            *partition = Partition::default();
        }
        Ok((columns, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(values: &[f64]) -> Stats {
        let mut s = Stats::new(10);
        for (i, v) in values.iter().enumerate() {
            s.add(i as u64 + 1, *v);
        }
        s
    }

    #[test]
    fn one_dominant_person_is_flattened_to_the_others() {
        let mut plain = vec![1.0; 100];
        let flat = stats(&plain).flattened();
        plain[17] = 1000.0;
        assert_eq!(stats(&plain).flattened(), flat);
        plain[17] = -1000.0;
        assert_eq!(stats(&plain).flattened(), flat);
        assert_eq!(flat, (100.0, 1.0));
    }

    #[test]
    fn nine_dominant_persons_are_flattened_but_ten_are_not() {
        let mut v = vec![1.0; 100];
        for x in v.iter_mut().take(9) {
            *x = 500.0;
        }
        assert_eq!(stats(&v).flattened(), (100.0, 1.0));
        v[9] = 500.0;
        assert_eq!(stats(&v).flattened().0, 10.0 * 500.0 + 90.0);
    }

    #[test]
    fn a_few_persons_count_as_their_median() {
        let s = stats(&[1.0, 1.0, 1.0, 900.0, 1.0]);
        assert_eq!(s.flattened(), (5.0, 1.0));
        assert_eq!(s.persons, 5);
    }

    #[test]
    fn zeros_and_non_numbers_contribute_nothing() {
        let s = stats(&[0.0, f64::NAN, 2.0]);
        assert_eq!(s.persons, 1);
        let s = stats(&[f64::INFINITY; 30]);
        assert_eq!(s.flattened().0, 30.0 * MAX_CONTRIBUTION);
    }

    #[test]
    fn rows_per_group_and_person_gather_into_groups() {
        use crate::sdc::cellkey::{RecordKey, record_keys};
        use arrow::array::{Float64Array, Int64Array, StringArray};
        use arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("person", DataType::UInt64, true),
            Field::new("rows", DataType::Int64, true),
            Field::new("total", DataType::Float64, true),
        ]));
        let key = RecordKey::from_secret(&[1u8; 32]);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "a", "b", "a", "b"])),
                Arc::new(
                    record_keys(
                        &key,
                        &StringArray::from(vec![
                            Some("p1"),
                            Some("p2"),
                            Some("p1"),
                            None,
                            Some("p3"),
                        ]),
                    )
                    .expect("keys"),
                ),
                Arc::new(Int64Array::from(vec![2, 1, 1, 5, 0])),
                Arc::new(Float64Array::from(vec![
                    Some(3.0),
                    None,
                    Some(0.0),
                    Some(9.0),
                    Some(4.0),
                ])),
            ],
        )
        .expect("batch");
        let mut g = Gatherer::new(
            &schema,
            vec![0],
            1,
            vec![(2, Part::Count), (3, Part::Sum)],
            10,
            10,
        )
        .expect("gatherer");
        g.push(&batch).expect("push");
        let (keys, groups) = g.finish().expect("finish");
        assert_eq!(keys[0].as_string::<i32>().value(0), "a");
        assert_eq!(keys[0].as_string::<i32>().value(1), "b");
        // Group a: p1 and p2 (the row without a person is dropped).
        assert_eq!(groups[0].persons.persons, 2);
        assert_eq!(groups[0].parts[0].persons, 2);
        assert_eq!(groups[0].parts[0].flattened().0, 3.0);
        assert_eq!(groups[0].parts[1].persons, 1);
        // Group b: p1 only to the count (a total of 0), p3 only to the sum (0 rows).
        assert_eq!(groups[1].persons.persons, 2);
        assert_eq!(groups[1].parts[0].persons, 1);
        assert_eq!(groups[1].parts[1].persons, 1);
        assert_eq!(groups[1].persons.key, combine(key.of(b"p1"), key.of(b"p3")));
        let mut few = Gatherer::new(&schema, vec![0], 1, vec![], 10, 1).expect("gatherer");
        assert!(matches!(
            few.push(&batch),
            Err(GatherError::TooManyGroups(1))
        ));
    }

    #[test]
    fn the_cell_key_does_not_depend_on_order() {
        let mut a = Stats::new(10);
        let mut b = Stats::new(10);
        for r in [5u64, 9, 13] {
            a.add(r, 1.0);
        }
        for r in [13u64, 5, 9] {
            b.add(r, 1.0);
        }
        assert_eq!(a.key, b.key);
        assert_eq!(a.flattened(), b.flattened());
    }

    /// Random rows with repeated persons, null persons, nulls, zeros and filters.
    fn random_rows(seed: u64, rows: usize) -> RecordBatch {
        use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray, UInt64Array};
        use arrow::datatypes::{Field, Schema};
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bands = ["18-20", "21-24", "25-29", "30+"];
        let band: StringArray = (0..rows)
            .map(|_| rng.random_bool(0.95).then(|| bands[rng.random_range(0..4)]))
            .collect();
        let year: Int64Array = (0..rows)
            .map(|_| rng.random_bool(0.9).then(|| rng.random_range(2020..2024)))
            .collect();
        let person: UInt64Array = (0..rows)
            .map(|_| {
                rng.random_bool(0.97).then(|| {
                    rng.random_range(0..rows as u64 / 3)
                        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                })
            })
            .collect();
        let x: Float64Array = (0..rows)
            .map(|_| match rng.random_range(0..10) {
                0 => None,
                1 => Some(0.0),
                2 => Some(rng.random_range(-1e6..1e6)),
                _ => Some(rng.random_range(0..40) as f64),
            })
            .collect();
        let f: BooleanArray = (0..rows)
            .map(|_| rng.random_bool(0.9).then(|| rng.random_bool(0.6)))
            .collect();
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("band", DataType::Utf8, true),
            Field::new("year", DataType::Int64, true),
            Field::new("person", DataType::UInt64, true),
            Field::new("x", DataType::Float64, true),
            Field::new("f", DataType::Boolean, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                std::sync::Arc::new(band),
                std::sync::Arc::new(year),
                std::sync::Arc::new(person),
                std::sync::Arc::new(x),
                std::sync::Arc::new(f),
            ],
        )
        .expect("batch")
    }

    fn same(a: &Stats, b: &Stats) -> bool {
        let (ta, ma) = a.flattened();
        let (tb, mb) = b.flattened();
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0);
        a.persons == b.persons && a.key == b.key && close(ta, tb) && close(ma, mb)
    }

    /// The one-pass table gives what DataFusion's per-(group, person) aggregate read by
    /// the gatherer gives, group by group, over random rows in several batches.
    #[tokio::test]
    async fn the_person_table_agrees_with_the_aggregate_and_the_gatherer() {
        use datafusion::prelude::SessionContext;
        let parts = [
            Part::Count,
            Part::Sum,
            Part::Count,
            Part::Sum,
            Part::Count,
            Part::Count,
        ];
        for (seed, groups) in [(1u64, 2usize), (2, 1), (3, 0), (4, 2)] {
            let batch = random_rows(seed, 5000);
            let ctx = SessionContext::new();
            let batches: Vec<RecordBatch> = (0..5).map(|i| batch.slice(i * 1000, 1000)).collect();
            let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![batches])
                .expect("table");
            ctx.register_table("t", std::sync::Arc::new(table))
                .expect("register");
            let keys = ["band", "year"][..groups].join(", ");
            let lead = |rest: &str| {
                if groups == 0 {
                    rest.to_owned()
                } else {
                    format!("{keys}, {rest}")
                }
            };
            let aggregate = ctx
                .sql(&format!(
                    "SELECT {}, count(1), sum(try_cast(x AS double)), count(x) FILTER (WHERE f), \
                     sum(try_cast(x AS double)) FILTER (WHERE f), count(NULL), \
                     count(1) FILTER (WHERE coalesce(f, false)) FROM t GROUP BY {}",
                    lead("person"),
                    lead("person")
                ))
                .await
                .expect("aggregate")
                .collect()
                .await
                .expect("run");
            let schema = aggregate[0].schema();
            let part_cols = parts
                .iter()
                .enumerate()
                .map(|(i, p)| (groups + 1 + i, *p))
                .collect();
            let mut gatherer =
                Gatherer::new(&schema, (0..groups).collect(), groups, part_cols, 10, 100)
                    .expect("gatherer");
            for b in &aggregate {
                gatherer.push(b).expect("push");
            }
            let (want_keys, want) = gatherer.finish().expect("finish");
            let rows = ctx
                .sql(&format!(
                    "SELECT {}, 1 AS a0, try_cast(x AS double) AS a1, x AS a2, f AS f2, try_cast(x AS double) AS a3, f AS f3, NULL AS a4, 1 AS a5, coalesce(f, false) AS f5 FROM t",
                    lead("person")
                ))
                .await
                .expect("rows")
                .collect()
                .await
                .expect("run");
            let a = groups + 1;
            let inputs = vec![
                PartInput {
                    part: Part::Count,
                    arg: a,
                    filter: None,
                },
                PartInput {
                    part: Part::Sum,
                    arg: a + 1,
                    filter: None,
                },
                PartInput {
                    part: Part::Count,
                    arg: a + 2,
                    filter: Some(a + 3),
                },
                PartInput {
                    part: Part::Sum,
                    arg: a + 4,
                    filter: Some(a + 5),
                },
                PartInput {
                    part: Part::Count,
                    arg: a + 6,
                    filter: None,
                },
                // A filter without nulls.
                PartInput {
                    part: Part::Count,
                    arg: a + 7,
                    filter: Some(a + 8),
                },
            ];
            let pool: std::sync::Arc<dyn MemoryPool> = std::sync::Arc::new(
                datafusion::execution::memory_pool::UnboundedMemoryPool::default(),
            );
            // Merged only at the end, and merged after every batch.
            for slack in [MERGE_SLACK, 1] {
                let mut table = PersonTable::new(
                    &rows[0].schema(),
                    (0..groups).collect(),
                    groups,
                    inputs.clone(),
                    10,
                    100,
                    &pool,
                )
                .expect("table");
                table.slack = slack;
                for b in &rows {
                    table.push(b).expect("push");
                }
                // The table is held in the query's memory budget, and given back after.
                assert!(pool.reserved() > 0);
                if slack == 1 {
                    // Partitions were merged before the end: fewer rows held than read.
                    let merged: usize = table.partitions.iter().map(|p| p.merged).sum();
                    let held: usize = table.partitions.iter().map(|p| p.rows.len()).sum();
                    let read = rows.iter().map(RecordBatch::num_rows).sum::<usize>();
                    assert!(merged > 0, "seed {seed}: merged as it went");
                    assert!(
                        held < read * table.stride(),
                        "seed {seed}: {held} words held"
                    );
                }
                let (got_keys, got) = table.finish().expect("finish");
                assert_eq!(pool.reserved(), 0);
                assert_eq!(got.len(), want.len(), "seed {seed}: groups");
                // Match groups by their values (the two may meet them in different orders).
                let text = |cols: &[ArrayRef], r: usize| -> Vec<String> {
                    cols.iter()
                        .map(|c| {
                            datafusion::common::ScalarValue::try_from_array(c, r)
                                .expect("value")
                                .to_string()
                        })
                        .collect()
                };
                for (g, w) in want.iter().enumerate() {
                    let k = text(&want_keys, g);
                    let at = (0..got.len())
                        .find(|&r| text(&got_keys, r) == k)
                        .unwrap_or_else(|| panic!("seed {seed}: group {k:?} missing"));
                    let (g_persons, w_persons) = (&got[at].persons, &w.persons);
                    assert_eq!(
                        (g_persons.persons, g_persons.key),
                        (w_persons.persons, w_persons.key),
                        "seed {seed}: {k:?} persons"
                    );
                    assert!(w.persons.persons > 0 || k.iter().any(|v| v == "NULL") || groups == 0);
                    for p in 0..parts.len() {
                        assert!(
                            same(&got[at].parts[p], &w.parts[p]),
                            "seed {seed}: {k:?} part {p}: {:?} against {:?}",
                            got[at].parts[p],
                            w.parts[p]
                        );
                    }
                }
            }
            // The group limit holds as the gatherer's does.
            if groups > 0 {
                let mut small = PersonTable::new(
                    &rows[0].schema(),
                    (0..groups).collect(),
                    groups,
                    vec![],
                    10,
                    3,
                    &pool,
                )
                .expect("table");
                assert!(matches!(
                    rows.iter().try_for_each(|b| small.push(b)),
                    Err(GatherError::TooManyGroups(3))
                ));
            }
            // The table stays within the query's memory budget.
            let tight: std::sync::Arc<dyn MemoryPool> = std::sync::Arc::new(
                datafusion::execution::memory_pool::GreedyMemoryPool::new(4096),
            );
            let mut held = PersonTable::new(
                &rows[0].schema(),
                (0..groups).collect(),
                groups,
                vec![],
                10,
                100,
                &tight,
            )
            .expect("table");
            assert!(matches!(
                rows.iter().try_for_each(|b| held.push(b)),
                Err(GatherError::DataFusion(
                    DataFusionError::ResourcesExhausted(_)
                ))
            ));
        }
    }
}
