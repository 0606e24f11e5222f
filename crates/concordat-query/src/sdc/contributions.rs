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
}

/// Gathers per-(group, person) rows into per-group statistics.
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
        Group {
            persons: Stats::new(self.k),
            parts: vec![Stats::new(self.k); self.parts.len()],
        }
    }

    /// Reads one batch of per-(group, person) rows, each person by their record key.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), GatherError> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let person = batch
            .column(self.person_at)
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| GatherError::Shape("the person column is not a record key".into()))?;
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
}
