//! The persons behind an aggregate cell: how many distinct pseudonyms, and a fixed-size
//! sketch of which. Two sketches subtract; when the two sets differ by only a few
//! persons the difference can be decoded exactly (an invertible Bloom lookup table), so
//! the gateway can tell that two released cells differ by fewer than `min_count` persons
//! without keeping any pseudonym.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility,
};

/// Cells in a sketch: three sub-tables, each person in one cell of each.
const SUB: usize = 20;
const CELLS: usize = 3 * SUB;
const SEEDS: [u64; 3] = [
    0x9e37_79b9_7f4a_7c15,
    0xbf58_476d_1ce4_e5b9,
    0x94d0_49bb_1331_11eb,
];
const CHECK_SEED: u64 = 0x2545_f491_4f6c_dd1d;
/// Serialised size: the count, then per cell (count, key sum, check sum).
pub const SKETCH_BYTES: usize = 8 + CELLS * 24;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable 64-bit key for a pseudonym (FNV-1a, then mixed).
pub fn key_of(pseudonym: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pseudonym {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn slot(key: u64, table: usize) -> usize {
    table * SUB + (mix(key ^ SEEDS[table]) % SUB as u64) as usize
}

fn check(key: u64) -> u64 {
    mix(key ^ CHECK_SEED)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cell {
    n: i64,
    keys: u64,
    checks: u64,
}

/// The distinct persons behind a cell: their number and a sketch of who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persons {
    /// Distinct persons.
    pub count: u64,
    cells: Vec<Cell>,
}

impl Persons {
    /// No one.
    pub fn empty() -> Persons {
        Persons {
            count: 0,
            cells: vec![Cell::default(); CELLS],
        }
    }

    /// The sketch of a set of distinct keys.
    pub fn of_keys(keys: impl IntoIterator<Item = u64>) -> Persons {
        let mut p = Persons::empty();
        for k in keys {
            p.count += 1;
            p.toggle(k, 1);
        }
        p
    }

    fn toggle(&mut self, key: u64, sign: i64) {
        let c = check(key);
        for t in 0..3 {
            let cell = &mut self.cells[slot(key, t)];
            cell.n += sign;
            cell.keys ^= key;
            cell.checks ^= c;
        }
    }

    /// Serialised form (fixed size).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SKETCH_BYTES);
        out.extend_from_slice(&self.count.to_le_bytes());
        for c in &self.cells {
            out.extend_from_slice(&c.n.to_le_bytes());
            out.extend_from_slice(&c.keys.to_le_bytes());
            out.extend_from_slice(&c.checks.to_le_bytes());
        }
        out
    }

    /// Parses [`Persons::to_bytes`]; `None` if the length is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Option<Persons> {
        if bytes.len() != SKETCH_BYTES {
            return None;
        }
        let word = |i: usize| -> u64 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let cells = (0..CELLS)
            .map(|c| Cell {
                n: word(1 + 3 * c) as i64,
                keys: word(2 + 3 * c),
                checks: word(3 + 3 * c),
            })
            .collect();
        Some(Persons {
            count: word(0),
            cells,
        })
    }

    /// How many persons are in exactly one of the two sets, when that can be recovered
    /// (it always can for small differences, which are the ones that matter); `None`
    /// when the difference is too large to decode.
    pub fn difference(&self, other: &Persons) -> Option<u64> {
        let mut d = Persons {
            count: 0,
            cells: self
                .cells
                .iter()
                .zip(&other.cells)
                .map(|(a, b)| Cell {
                    n: a.n - b.n,
                    keys: a.keys ^ b.keys,
                    checks: a.checks ^ b.checks,
                })
                .collect(),
        };
        let mut found = 0u64;
        // Each round peels one person; a difference this sketch can decode has fewer than
        // CELLS persons, so the loop is bounded.
        for _ in 0..=CELLS {
            let pure = (0..CELLS).find(|&i| {
                let c = d.cells[i];
                (c.n == 1 || c.n == -1) && c.checks == check(c.keys) && slot(c.keys, i / SUB) == i
            });
            match pure {
                Some(i) => {
                    let c = d.cells[i];
                    d.toggle(c.keys, -c.n);
                    found += 1;
                }
                None => break,
            }
        }
        d.cells
            .iter()
            .all(|c| *c == Cell::default())
            .then_some(found)
    }
}

/// The aggregate `concordat_persons(pseudonym)`: a binary [`Persons`] for the distinct
/// non-null pseudonyms of each group. Never registered in a caller's session: only the
/// gateway's own rewrite adds it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PersonsUdaf {
    signature: Signature,
}

impl PersonsUdaf {
    /// The aggregate function.
    pub fn udaf() -> Arc<AggregateUDF> {
        Arc::new(AggregateUDF::from(PersonsUdaf {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8View]),
                    TypeSignature::Exact(vec![DataType::LargeUtf8]),
                ],
                Volatility::Immutable,
            ),
        }))
    }
}

impl AggregateUDFImpl for PersonsUdaf {
    fn name(&self) -> &str {
        "concordat_persons"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::<PersonsAccumulator>::default())
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[keys]", args.name),
            DataType::Binary,
            true,
        ))])
    }
}

#[derive(Debug, Default)]
struct PersonsAccumulator {
    keys: HashSet<u64>,
}

fn keys_bytes(keys: &HashSet<u64>) -> Vec<u8> {
    keys.iter().flat_map(|k| k.to_le_bytes()).collect()
}

impl Accumulator for PersonsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(values) = values.first() else {
            return exec_err!("concordat_persons takes one argument");
        };
        match values.data_type() {
            DataType::Utf8 => self.keys.extend(
                values
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(|s| key_of(s.as_bytes())),
            ),
            DataType::LargeUtf8 => self.keys.extend(
                values
                    .as_string::<i64>()
                    .iter()
                    .flatten()
                    .map(|s| key_of(s.as_bytes())),
            ),
            DataType::Utf8View => self.keys.extend(
                values
                    .as_string_view()
                    .iter()
                    .flatten()
                    .map(|s| key_of(s.as_bytes())),
            ),
            _ => return exec_err!("concordat_persons takes a string"),
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(
            Persons::of_keys(self.keys.iter().copied()).to_bytes(),
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.keys.capacity() * 16
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(keys_bytes(&self.keys)))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(states) = states.first() else {
            return exec_err!("concordat_persons state missing");
        };
        let Some(states) = states.as_any().downcast_ref::<BinaryArray>() else {
            return exec_err!("concordat_persons state is not binary");
        };
        for bytes in states.iter().flatten() {
            for chunk in bytes.chunks_exact(8) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                self.keys.insert(u64::from_le_bytes(b));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(range: std::ops::Range<u64>) -> Vec<u64> {
        range
            .map(|i| key_of(format!("{i:064x}").as_bytes()))
            .collect()
    }

    #[test]
    fn small_differences_are_recovered_exactly() {
        let base = keys(0..5000);
        let a = Persons::of_keys(base.iter().copied());
        for extra in 0..12u64 {
            let b = Persons::of_keys(base.iter().copied().chain(keys(10_000..10_000 + extra)));
            assert_eq!(a.difference(&b), Some(extra), "{extra} added");
            assert_eq!(b.difference(&a), Some(extra));
        }
        // Removed and added at once: the symmetric difference.
        let c = Persons::of_keys(keys(3..5000).into_iter().chain(keys(20_000..20_002)));
        assert_eq!(a.difference(&c), Some(5));
    }

    #[test]
    fn large_differences_are_not_mistaken_for_small_ones() {
        let a = Persons::of_keys(keys(0..5000));
        for n in [100u64, 400, 2000] {
            let b = Persons::of_keys(keys(0..5000 - n));
            assert!(
                a.difference(&b).is_none_or(|d| d == n),
                "a difference of {n} decoded wrongly"
            );
        }
        let disjoint = Persons::of_keys(keys(100_000..105_000));
        assert_eq!(a.difference(&disjoint), None);
    }

    #[test]
    fn sketches_round_trip_through_bytes() {
        let a = Persons::of_keys(keys(0..77));
        let bytes = a.to_bytes();
        assert_eq!(bytes.len(), SKETCH_BYTES);
        assert_eq!(Persons::from_bytes(&bytes), Some(a));
        assert_eq!(Persons::from_bytes(&bytes[1..]), None);
    }
}
